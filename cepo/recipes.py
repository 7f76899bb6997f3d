"""The method YAMLs (recipes): Hydra composition of ``configs/`` on top of verl's own base config, and validation.

Engine-neutral: both engines compose and validate a method YAML here (the YAMLs use verl's config schema, the
common language of both engines). The verl entry point (``python -m cepo.integrations.verl.main --config-name
cepo``) and the TRL engine compose the *same* config through :func:`compose_method_config`: our ``configs/``
directory is the primary config dir and verl's ``verl/trainer/config`` package is on the
search path (each method YAML declares ``hydra.searchpath: [pkg://verl.trainer.config]``
and starts from verl's ``ppo_trainer`` defaults), so every verl key and override works.

This module imports only hydra/omegaconf, ``cepo.config`` and ``cepo.algorithms``: no ray, no GPU, no engine.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cepo.algorithms import METHODS as ALGORITHM_METHODS
from cepo.algorithms import get_method
from cepo.config import CEPOConfig

VERL_CONFIG_SEARCHPATH = "pkg://verl.trainer.config"
"""Where Hydra finds verl's base ``ppo_trainer`` config (a Python package inside verl)."""

METHODS = tuple(sorted(ALGORITHM_METHODS))
"""``algorithm.adv_estimator`` values (the registered methods of ``cepo.algorithms``); each is also ``cepo.method``."""

TRAINER_MODE = "cepo_sync"
"""``trainer.v1.trainer_mode`` of our v1 trainer (see ``cepo.integrations.verl.trainer``)."""

PLUGIN_MODULE = "cepo.integrations.verl.plugin"
"""cepo's verl plugin (the M-RoPE position-ids fix), imported by every verl worker through
``actor_rollout_ref.model.external_lib`` (:func:`finalize_config`)."""

_CONFIGS_ENV = "CEPO_CONFIGS_DIR"

PACKAGE_CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
"""The method YAMLs shipped inside the package (``cepo/configs``)."""


class ConfigError(ValueError):
    """A method config that cannot be composed or fails validation.

    ``str(err)`` is one line that names the key (or the file and line) and the fix; the CLIs print it
    and exit with status 2. A ``ValueError``, so callers catching ``ValueError`` keep working.
    """


def configs_dir() -> Path:
    """Absolute path of the ``configs/`` directory that holds the method YAMLs.

    ``$CEPO_CONFIGS_DIR`` if set (it is then always used: a folder that lacks a YAML fails at composition,
    naming the folder and the file), else the package's ``cepo/configs`` (shipped as package data, so a
    wheel install has it too; the repository's top-level ``configs`` is a symlink to it).

    Raises:
        FileNotFoundError: ``$CEPO_CONFIGS_DIR`` is set but is not a folder, or the package's YAMLs are missing.
    """
    env = os.environ.get(_CONFIGS_ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_dir():
            raise FileNotFoundError(
                f"${_CONFIGS_ENV}={env} is not a folder; point it at a folder holding your method YAMLs "
                f"(copy them from {PACKAGE_CONFIGS_DIR}) or unset it to use those"
            )
        return path
    if not (PACKAGE_CONFIGS_DIR / "cepo.yaml").is_file():
        raise FileNotFoundError(
            f"the cepo method YAMLs are missing from {PACKAGE_CONFIGS_DIR}; reinstall cepo (they ship as package "
            f"data in cepo/configs) or set ${_CONFIGS_ENV} to a folder that holds them"
        )
    return PACKAGE_CONFIGS_DIR


CONFIGS_DIR: Path | None
"""``configs_dir()`` evaluated at import time, or ``None`` if it is missing (call ``configs_dir()``
for the error message)."""
try:
    CONFIGS_DIR = configs_dir()
except FileNotFoundError:
    CONFIGS_DIR = None


def reward_function_path() -> str:
    """Absolute path of ``cepo/integrations/verl/reward.py`` (verl loads custom rewards by file path)."""
    return str(Path(__file__).resolve().parent / "integrations" / "verl" / "reward.py")


def compose_method_config(
    config_name: str, overrides: list[str] | None = None, config_dir: str | Path | None = None, engine: str = "verl"
) -> DictConfig:
    """Compose ``configs/<config_name>.yaml`` (with verl's base config) exactly as the entry point does.

    Args:
        config_name: a method YAML in ``configs/`` (``grpo``, ``rlsd``, ``cepo``, or your own).
        overrides: Hydra command-line style overrides, e.g. ``["cepo.lam0=0.3", "data.train_batch_size=8"]``.
        config_dir: the primary config folder; default :func:`configs_dir`.
        engine: ``verl`` or ``trl``, the engine that will run it (:func:`validate_method_config`).

    Returns:
        The composed config, with :func:`finalize_config` applied (reward path filled in) and
        validated by :func:`validate_method_config`; ``cepo`` keys are checked by
        ``CEPOConfig.from_mapping``, so a misspelt or out-of-range key raises here.

    Raises:
        ConfigError: one line naming the key (a misspelt key, a bad override, a value out of range) or the
            file and line (a YAML syntax error, a missing YAML), and the fix.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cepo.text_files import check_method_yaml

    directory = Path(config_dir) if config_dir is not None else configs_dir()
    overrides = list(overrides or [])
    if GlobalHydra.instance().is_initialized():
        # compose inside an already-running Hydra app (e.g. a notebook): use a fresh context
        GlobalHydra.instance().clear()
    try:
        check_method_yaml(directory / f"{config_name}.yaml")  # empty, not UTF-8, cepo: not a block: name the file
        with initialize_config_dir(config_dir=str(directory), version_base=None, job_name="cepo"):
            cfg = compose(config_name=config_name, overrides=overrides)
        finalize_config(cfg)
        validate_method_config(cfg, engine=engine)
    except ConfigError:
        raise
    except Exception as err:
        message = config_error_message(err, directory)
        if message is None:
            raise
        raise ConfigError(message) from err
    return cfg


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _folder_words(directory: Path) -> str:
    """``/x`` plus where it came from, for messages."""
    from_env = os.environ.get(_CONFIGS_ENV) and directory == configs_dir()
    return f"{directory} (${_CONFIGS_ENV})" if from_env else str(directory)


def _yaml_names(directory: Path) -> str:
    names = sorted(p.stem for p in directory.glob("*.yaml"))
    return ", ".join(names) if names else "none"


def _key_list(keys: list[str], limit: int = 30) -> str:
    keys = sorted(keys)
    more = f", … ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _unknown_key_message(cause: Any, override: str | None) -> str:
    """``cepo.eps=0.3`` → the unknown key, the closest known one, the known keys of its block, ``+key=value``."""
    full_key = str(cause.full_key)
    parent = full_key.rpartition(".")[0]
    known = [str(k) for k in cause.parent_node] if isinstance(cause.parent_node, DictConfig) else []
    if not parent:
        known = [k for k in known if k != "hydra"]
    close = difflib.get_close_matches(str(cause.key), known, n=1)
    head = f"unknown key {full_key}" + (f" in the override {override}" if override else "")
    if close:
        head += f" (did you mean {parent + '.' if parent else ''}{close[0]}?)"
    parts = [head]
    if known:
        parts.append(f"known keys of {parent or 'the top level'}: {_key_list(known)}")
    if override:
        parts.append(f"to add a new key write +{override}")
    return "; ".join(parts)


def config_error_message(err: BaseException, config_dir: str | Path | None = None) -> str | None:
    """One line for an error raised while composing or validating a method config, or ``None`` if ``err`` is
    not a config error (then the caller re-raises it).

    Handles Hydra's composition errors (an override of a key that does not exist, a bad override, a missing
    YAML), YAML syntax errors (file:line), OmegaConf errors (naming the key) and the validation errors
    (``ValueError``/``TypeError`` raised by :func:`validate_method_config`).
    """
    import yaml
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    directory = Path(config_dir) if config_dir is not None else None
    if isinstance(err, ConfigError):
        return str(err)
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else "a config file"
        what = err.problem or err.context or "invalid YAML"
        start = err.context_mark
        if err.context and err.problem and start is not None and mark is not None and start.line != mark.line:
            what += f" ({err.context} that starts at line {start.line + 1})"
        return f"YAML syntax error in {where}: {what}; fix the file there"
    if isinstance(err, yaml.YAMLError):
        return f"YAML error: {_first_line(str(err))}"
    if isinstance(err, OverrideParseException):
        detail = [line for line in str(err).splitlines()
                  if line.strip() and not line.startswith(("Error parsing override", "See https://"))]
        return (f"cannot parse the override {err.override!r}: {'; '.join(detail) or 'syntax error'}; overrides are "
                "key=value (+key=value adds a key, ~key deletes one; quote values with spaces or special characters)")
    if isinstance(err, MissingConfigException):
        return _missing_config_message(err, directory)
    if isinstance(err, ConfigCompositionException):
        cause = err.__cause__
        if (isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None)
                and cause.parent_node is not None):
            match = re.search(r"use \+(\S+)", str(err))
            return _unknown_key_message(cause, match.group(1) if match else None)
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        if cause is not None and not isinstance(cause, HydraException):
            text += f" ({_first_line(str(cause))})"
        return text
    if isinstance(err, HydraException):
        return _first_line(str(err))
    if isinstance(err, OmegaConfBaseException):
        key = getattr(err, "full_key", None)
        return f"{key}: {_first_line(str(err))}" if key else _first_line(str(err))
    if isinstance(err, (ValueError, TypeError, FileNotFoundError)) and _first_line(str(err)):
        return " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return None


def _missing_config_message(err: Any, directory: Path | None) -> str:
    """A YAML Hydra could not find: the primary config (``--config-name``) or one in a defaults list."""
    missing = err.missing_cfg_file
    where = _folder_words(directory) if directory is not None else "the config folder"
    names = _yaml_names(directory) if directory is not None else "?"
    package = "" if directory == PACKAGE_CONFIGS_DIR else f" (copy it from {PACKAGE_CONFIGS_DIR})"
    including = re.match(r"In '([^']+)'", str(err))
    if including:
        return (f"{including.group(1)}.yaml lists {missing} in its defaults, but there is no {missing}.yaml in "
                f"{where}{package}; the YAMLs there: {names}")
    if str(err).startswith("Cannot find primary config"):
        return f"no {missing}.yaml in {where}{package}; the YAMLs there: {names}"
    return _first_line(str(err))


def finalize_config(cfg: DictConfig) -> DictConfig:
    """Fill values that depend on where cepo is installed (in place, also returned).

    ``reward.custom_reward_function.path`` left ``null`` in the YAML becomes the absolute path of
    our reward function file, so the YAML stays machine-independent. ``actor_rollout_ref.model.external_lib`` gets
    cepo's verl plugin added (:data:`PLUGIN_MODULE`), so every verl worker imports it when it builds the model config,
    whatever ``VERL_USE_EXTERNAL_PLUGINS`` says or whether cepo was pip-installed (``cepo.integrations.verl.plugin``).
    """
    with open_dict(cfg):
        reward_fn = OmegaConf.select(cfg, "reward.custom_reward_function")
        if reward_fn is not None and not reward_fn.get("path"):
            reward_fn.path = reward_function_path()
        model = OmegaConf.select(cfg, "actor_rollout_ref.model")
        if model is not None:
            libs = model.get("external_lib", None)
            libs = [] if libs is None else [libs] if isinstance(libs, str) else list(libs)
            if PLUGIN_MODULE not in libs:
                model.external_lib = PLUGIN_MODULE if not libs else [*libs, PLUGIN_MODULE]
    return cfg


def cepo_config_from(cfg: DictConfig) -> CEPOConfig:
    """The validated :class:`CEPOConfig` of a composed config (its top-level ``cepo:`` block)."""
    block = cfg.get("cepo")
    if block is None:
        raise ConfigError("the config has no top-level `cepo:` block; start from configs/cepo.yaml")
    if not isinstance(block, DictConfig):
        raise ConfigError(f"cepo must be a mapping (the cepo: block of keys), got {block!r}")
    values: Any = OmegaConf.to_container(block, resolve=True)
    return CEPOConfig.from_mapping(values)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{key}: {message}")


ENGINES = ("verl", "trl")



def validate_method_config(cfg: DictConfig, engine: str = "verl") -> CEPOConfig:
    """Start-up checks; every error names the offending key.

    Checks the ``cepo:`` block (``CEPOConfig.from_mapping``: unknown keys and out-of-range values),
    that ``algorithm.adv_estimator`` names the same method as ``cepo.method``, the verl keys the
    paper setup depends on (group size, batch sizes, lengths, LoRA, learning rate, temperature), and
    the verl features the teacher-pass methods cannot honour (KL in the reward, multi-turn rollouts), and, for
    ``engine="verl"``, what OPSD's / SDPO's teachers need of verl's actor (:func:`_check_verl_distillation`).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    try:
        cepo = cepo_config_from(cfg)
    except ConfigError:
        raise
    except ValueError as err:  # CEPOConfig's own checks, an interpolation that does not resolve
        raise ConfigError(config_error_message(err) or str(err)) from err
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
    if estimator != "grpo":
        _check_teacher_pass_features(cfg, estimator)
    if get_method(estimator).one_update_per_rollout:
        _check_one_update_per_rollout(cfg, estimator)
    if engine == "verl" and get_method(estimator).distill_teacher is not None:
        _check_verl_distillation(cfg, cepo)
    if cepo.teacher_max_prompt_length is not None:
        max_prompt = OmegaConf.select(cfg, "data.max_prompt_length")
        _require(cepo.teacher_max_prompt_length >= max_prompt, "cepo.teacher_max_prompt_length",
                 f"must be >= data.max_prompt_length={max_prompt} (the teacher prompt is the student prompt plus "
                 f"the hint), got {cepo.teacher_max_prompt_length}")
    return cepo


def _check_one_update_per_rollout(cfg: DictConfig, estimator: str) -> None:
    """ConSPO's objective has no importance ratio: its advantages are its exact gradient at the rollout policy, so
    every rollout batch is one optimizer step (one mini-batch, one epoch), averaged over all its tokens."""
    batch = OmegaConf.select(cfg, "data.train_batch_size")
    mini = OmegaConf.select(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size")
    _require(mini == batch, "actor_rollout_ref.actor.ppo_mini_batch_size",
             f"must equal data.train_batch_size={batch} with algorithm.adv_estimator={estimator} (one optimizer step "
             f"per rollout batch: the objective has no importance ratio), got {mini}")
    epochs = OmegaConf.select(cfg, "actor_rollout_ref.actor.ppo_epochs", default=1)
    _require(epochs == 1, "actor_rollout_ref.actor.ppo_epochs",
             f"must be 1 with algorithm.adv_estimator={estimator}, got {epochs}")
    mode = OmegaConf.select(cfg, "actor_rollout_ref.actor.loss_agg_mode", default="token-mean")
    _require(mode == "token-mean", "actor_rollout_ref.actor.loss_agg_mode",
             f"must be token-mean with algorithm.adv_estimator={estimator} (its advantages are spread for a token "
             f"mean), got {mode!r}")
    exact = f"with algorithm.adv_estimator={estimator} (its advantages are the objective's exact gradient at ratio 1)"
    correction = OmegaConf.select(cfg, "algorithm.rollout_correction", default=None) or {}
    enabled = [f"{k}={correction.get(k)}" for k in ("rollout_is", "rollout_rs") if correction.get(k) is not None]
    enabled += ["bypass_mode=true"] if correction.get("bypass_mode", False) else []
    _require(not enabled, "algorithm.rollout_correction",
             f"must be off {exact}: {', '.join(enabled)} reweights or rejects its tokens by the rollout/trainer "
             "probability ratio; set algorithm.rollout_correction.rollout_is=null, rollout_rs=null, bypass_mode=false")
    _require(not OmegaConf.select(cfg, "actor_rollout_ref.actor.use_kl_loss", default=False),
             "actor_rollout_ref.actor.use_kl_loss",
             f"must be false {exact}: the KL loss term adds a gradient that is not ConSPO's; set it to false")
    entropy = OmegaConf.select(cfg, "actor_rollout_ref.actor.entropy_coeff", default=0)
    _require(not entropy, "actor_rollout_ref.actor.entropy_coeff",
             f"must be 0 {exact}: the entropy bonus adds a gradient that is not ConSPO's, got {entropy}; set it to 0")


def _check_verl_distillation(cfg: DictConfig, cepo: CEPOConfig) -> None:
    """OPSD / SDPO on verl (``cepo.integrations.verl.distill_worker``): a fixed or EMA teacher is the LoRA adapter
    disabled or averaged, so it needs LoRA; top-k / full mode runs the teacher's forward on the micro-batch's own image
    inputs and reads the student's logits through verl's logits-processor hook, which sees the whole sequence only
    without Ulysses sequence parallelism, fused kernels or a static packing pad."""
    distill = cepo.distill
    if distill.teacher in ("fixed", "ema"):
        rank = OmegaConf.select(cfg, "actor_rollout_ref.model.lora_rank", default=0) or 0
        _require(int(rank) > 0, "cepo.distill.teacher",
                 f"{distill.teacher} needs a LoRA actor on verl (the teacher is the model with its adapter "
                 f"{'disabled' if distill.teacher == 'fixed' else 'averaged'}, not a second full model); set "
                 "actor_rollout_ref.model.lora_rank > 0 or cepo.distill.teacher=live")
    if distill.mode == "sampled_token":
        return
    _require(cepo.teacher_sees_image, "cepo.teacher_sees_image",
             f"must be true with cepo.distill.mode={distill.mode}: the teacher's forward in each loss micro-batch "
             "reuses the micro-batch's image inputs; set it to true or cepo.distill.mode=sampled_token "
             "(with cepo.distill.loss_agg=token-mean)")
    actor = "actor_rollout_ref.actor"
    sp = OmegaConf.select(cfg, f"{actor}.ulysses_sequence_parallel_size", default=1) or 1
    _require(int(sp) == 1, f"{actor}.ulysses_sequence_parallel_size",
             f"must be 1 with cepo.distill.mode={distill.mode} (each rank must hold whole sequences for the teacher's "
             f"forward and the divergence), got {sp}; or cepo.distill.mode=sampled_token (with "
             "cepo.distill.loss_agg=token-mean)")
    fused = OmegaConf.select(cfg, "actor_rollout_ref.model.use_fused_kernels", default=False)
    _require(not fused, "actor_rollout_ref.model.use_fused_kernels",
             f"must be false with cepo.distill.mode={distill.mode} (fused kernels never build the student's logits "
             "that the divergence needs)")
    if distill.weight == 1.0:
        for key, off in ((f"{actor}.entropy_coeff", 0), (f"{actor}.use_kl_loss", False)):
            value = OmegaConf.select(cfg, key, default=off)
            _require(not value, key,
                     f"must be {str(off).lower()} with cepo.distill.mode={distill.mode} and cepo.distill.weight=1: the "
                     f"divergence replaces verl's loss, whose {key.rsplit('.', 1)[-1]} term would be dropped; set it "
                     "off or cepo.distill.weight < 1")
    strategy = OmegaConf.select(cfg, f"{actor}.strategy", default="fsdp")
    _require(strategy in ("fsdp", "fsdp2"), f"{actor}.strategy",
             f"must be fsdp or fsdp2 with cepo.distill.mode={distill.mode} (cepo's micro-batch teacher runs on verl's "
             f"FSDP engine), got {strategy!r}")


def _check_teacher_pass_features(cfg: DictConfig, estimator: str) -> None:
    """verl features that break the teacher passes or the group statistics of the non-GRPO methods (issue 7,
    item 6)."""
    _require(
        not OmegaConf.select(cfg, "algorithm.use_kl_in_reward", default=False),
        "algorithm.use_kl_in_reward",
        f"must be false with algorithm.adv_estimator={estimator}: the KL penalty in the reward gives groups whose "
        "verifier scores are all equal a non-zero advantage, but the teacher passes skip those rows (they are chosen "
        "from the verifier scores), so their token credit would be wrong; " + (
            "set it to false" if get_method(estimator).one_update_per_rollout else
            "use actor_rollout_ref.actor.use_kl_loss=true (KL as a loss term, weight "
            "actor_rollout_ref.actor.kl_loss_coef) instead"),
    )
    _require(
        not OmegaConf.select(cfg, "actor_rollout_ref.rollout.multi_turn.enable", default=False),
        "actor_rollout_ref.rollout.multi_turn.enable",
        f"must be false with algorithm.adv_estimator={estimator}: verl 0.9 computes the group advantage of a "
        "multi-turn session from its final output only for grpo (compute_advantage_for_multi_trajectories); for "
        "other estimators every output of a session would count as a group member, and the teacher contexts are "
        "single-turn; use single-turn rollouts, or algorithm.adv_estimator=grpo for multi-turn training",
    )
    loop = OmegaConf.select(cfg, "actor_rollout_ref.rollout.agent.default_agent_loop", default="single_turn_agent")
    _require(
        loop in (None, "single_turn_agent"),
        "actor_rollout_ref.rollout.agent.default_agent_loop",
        f"must be single_turn_agent with algorithm.adv_estimator={estimator}, got {loop!r}: an agent loop can return "
        "several outputs per session, which only grpo groups by the session's final output; use "
        "algorithm.adv_estimator=grpo for agent loops",
    )
