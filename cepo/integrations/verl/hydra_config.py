"""Hydra composition of the method YAMLs in ``configs/`` on top of verl's own base config.

The entry point (``python -m cepo.integrations.verl.main --config-name cepo``) and the TRL
engine compose the *same* config through :func:`compose_method_config`: our ``configs/``
directory is the primary config dir and verl's ``verl/trainer/config`` package is on the
search path (each method YAML declares ``hydra.searchpath: [pkg://verl.trainer.config]``
and starts from verl's ``ppo_trainer`` defaults), so every verl key and override works.

This module imports only hydra/omegaconf and ``cepo.config``: no ray, no GPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cepo.config import CEPOConfig

VERL_CONFIG_SEARCHPATH = "pkg://verl.trainer.config"
"""Where Hydra finds verl's base ``ppo_trainer`` config (a Python package inside verl)."""

METHODS = ("grpo", "rlsd", "cepo")
"""``algorithm.adv_estimator`` values this engine knows; each is also ``cepo.method``."""

TRAINER_MODE = "cepo_sync"
"""``trainer.v1.trainer_mode`` of our v1 trainer (see ``cepo.integrations.verl.trainer``)."""

_CONFIGS_ENV = "CEPO_CONFIGS_DIR"


def configs_dir() -> Path:
    """Absolute path of the repository's ``configs/`` directory.

    Looked up (1) in ``$CEPO_CONFIGS_DIR`` if set, else (2) in the package, ``cepo/configs`` (shipped
    as package data, so a wheel install has it too; the repository's top-level ``configs`` is a
    symlink to it).

    Raises:
        FileNotFoundError: naming both places looked at, when neither holds ``cepo.yaml``.
    """
    candidates: list[Path] = []
    env = os.environ.get(_CONFIGS_ENV)
    if env:
        candidates.append(Path(env).expanduser().resolve())
    candidates.append(Path(__file__).resolve().parents[2] / "configs")
    for path in candidates:
        if (path / "cepo.yaml").is_file():
            return path
    raise FileNotFoundError(
        f"cannot find the cepo configs/ directory (looked in {[str(p) for p in candidates]}). "
        f"Reinstall cepo (the YAMLs ship as package data in cepo/configs), or set ${_CONFIGS_ENV} to a configs/ path."
    )


CONFIGS_DIR: Path | None
"""``configs_dir()`` evaluated at import time, or ``None`` if it is missing (call ``configs_dir()``
for the error message)."""
try:
    CONFIGS_DIR = configs_dir()
except FileNotFoundError:
    CONFIGS_DIR = None


def reward_function_path() -> str:
    """Absolute path of ``cepo/integrations/verl/reward.py`` (verl loads custom rewards by file path)."""
    return str(Path(__file__).resolve().with_name("reward.py"))


def compose_method_config(config_name: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` (with verl's base config) exactly as the entry point does.

    Args:
        config_name: a method YAML in ``configs/`` (``grpo``, ``rlsd``, ``cepo``, or your own).
        overrides: Hydra command-line style overrides, e.g. ``["cepo.lam0=0.3", "data.train_batch_size=8"]``.

    Returns:
        The composed config, with :func:`finalize_config` applied (reward path filled in) and
        validated by :func:`validate_method_config`; ``cepo`` keys are checked by
        ``CEPOConfig.from_mapping``, so a misspelt or out-of-range key raises here.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    directory = configs_dir()
    overrides = list(overrides or [])
    was_initialized = GlobalHydra.instance().is_initialized()
    if was_initialized:
        # compose inside an already-running Hydra app (e.g. a notebook): use a fresh context
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(directory), version_base=None, job_name="cepo"):
        cfg = compose(config_name=config_name, overrides=overrides)
    finalize_config(cfg)
    validate_method_config(cfg)
    return cfg


def finalize_config(cfg: DictConfig) -> DictConfig:
    """Fill values that depend on where cepo is installed (in place, also returned).

    ``reward.custom_reward_function.path`` left ``null`` in the YAML becomes the absolute path of
    our reward function file, so the YAML stays machine-independent.
    """
    with open_dict(cfg):
        reward_fn = OmegaConf.select(cfg, "reward.custom_reward_function")
        if reward_fn is not None and not reward_fn.get("path"):
            reward_fn.path = reward_function_path()
    return cfg


def cepo_config_from(cfg: DictConfig) -> CEPOConfig:
    """The validated :class:`CEPOConfig` of a composed config (its top-level ``cepo:`` block)."""
    block = cfg.get("cepo")
    if block is None:
        raise ValueError("the config has no top-level `cepo:` block; start from configs/cepo.yaml")
    values: Any = OmegaConf.to_container(block, resolve=True)
    return CEPOConfig.from_mapping(values)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ValueError(f"{key}: {message}")


def validate_method_config(cfg: DictConfig) -> CEPOConfig:
    """Start-up checks; every error names the offending key.

    Checks the ``cepo:`` block (``CEPOConfig.from_mapping``: unknown keys and out-of-range values),
    that ``algorithm.adv_estimator`` names the same method as ``cepo.method``, and the verl keys the
    paper setup depends on (group size, batch sizes, lengths, LoRA, learning rate, temperature).
    """
    cepo = cepo_config_from(cfg)
    estimator = str(OmegaConf.select(cfg, "algorithm.adv_estimator"))
    _require(estimator in METHODS, "algorithm.adv_estimator", f"must be one of {list(METHODS)}, got {estimator!r}")
    _require(
        estimator == cepo.method,
        "algorithm.adv_estimator",
        f"is {estimator!r} but cepo.method is {cepo.method!r}; set both to the same method",
    )
    n = OmegaConf.select(cfg, "actor_rollout_ref.rollout.n")
    _require(isinstance(n, int) and n >= 2, "actor_rollout_ref.rollout.n", f"must be an int >= 2 (G), got {n!r}")
    for key in ("data.train_batch_size", "data.max_prompt_length", "data.max_response_length",
                "trainer.total_training_steps", "actor_rollout_ref.actor.ppo_mini_batch_size"):
        value = OmegaConf.select(cfg, key)
        _require(isinstance(value, int) and value > 0, key, f"must be a positive int, got {value!r}")
    mini = OmegaConf.select(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size")
    batch = OmegaConf.select(cfg, "data.train_batch_size")
    _require(batch % mini == 0, "actor_rollout_ref.actor.ppo_mini_batch_size",
             f"must divide data.train_batch_size={batch}, got {mini}")
    lr = OmegaConf.select(cfg, "actor_rollout_ref.actor.optim.lr")
    _require(isinstance(lr, (int, float)) and 0 < float(lr) < 1, "actor_rollout_ref.actor.optim.lr",
             f"must be in (0, 1), got {lr!r}")
    temperature = OmegaConf.select(cfg, "actor_rollout_ref.rollout.temperature")
    _require(isinstance(temperature, (int, float)) and float(temperature) > 0,
             "actor_rollout_ref.rollout.temperature", f"must be > 0, got {temperature!r}")
    for key in ("actor_rollout_ref.model.lora_rank", "actor_rollout_ref.model.lora_alpha"):
        value = OmegaConf.select(cfg, key)
        _require(isinstance(value, int) and value >= 0, key, f"must be an int >= 0, got {value!r}")
    warmup = OmegaConf.select(cfg, "actor_rollout_ref.actor.optim.lr_warmup_steps")
    total = OmegaConf.select(cfg, "trainer.total_training_steps")
    _require(isinstance(warmup, int) and warmup < total, "actor_rollout_ref.actor.optim.lr_warmup_steps",
             f"must be an int below trainer.total_training_steps={total}, got {warmup!r}")
    if cepo.teacher_max_prompt_length is not None:
        max_prompt = OmegaConf.select(cfg, "data.max_prompt_length")
        _require(cepo.teacher_max_prompt_length >= max_prompt, "cepo.teacher_max_prompt_length",
                 f"must be >= data.max_prompt_length={max_prompt} (the teacher prompt is the student prompt plus "
                 f"the hint), got {cepo.teacher_max_prompt_length}")
    return cepo
