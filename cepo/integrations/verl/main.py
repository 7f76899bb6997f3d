"""Entry point: ``python -m cepo.integrations.verl.main --config-name cepo [hydra overrides]``.

Hydra composes ``configs/<name>.yaml`` with verl's own ``ppo_trainer`` config on the search path (the
same composition as :func:`cepo.recipes.compose_method_config`), so every verl
override and Hydra flag works (``--cfg job``, ``--config-name grpo|rlsd|cepo``, ``cepo.lam0=0.3``, ``--help``).
The config is validated at start-up; Ray is started as verl's ``run_ppo`` would and the cluster's GPUs are
checked against the config's resource pools, then the rollout engine is checked (vLLM installed)
(:mod:`cepo.integrations.verl.resources`: one line, exit 2, before Hydra's run folder exists); then verl's own
``run_ppo`` starts a task runner that uses our ``cepo_sync`` v1 trainer.

A bad config (a misspelt key, a bad override, a YAML syntax error, a missing YAML, a value out of range)
prints one line naming the key (or file:line) and the fix, and exits with status 2, before Hydra prints a
config (``--cfg``) or creates its run folder. Hydra's run folder (composed config, overrides, log) goes to
``${trainer.default_local_dir}/hydra/<time>`` (``hydra.run.dir`` in ``paper_base.yaml``), not ``./outputs``.
Set ``HYDRA_FULL_ERROR=1`` for full tracebacks instead of the one-line messages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig

from cepo.integrations.verl.resources import check_rollout_engine, start_ray_checked
from cepo.recipes import (
    TRAINER_MODE,
    ConfigError,
    compose_method_config,
    config_error_message,
    configs_dir,
    finalize_config,
    validate_method_config,
)

PROG = "cepo (verl)"
"""Prefix of the one-line error messages."""

DEFAULT_CONFIG_NAME = "cepo"
"""The method YAML composed when ``--config-name`` is not given."""

EXIT_BAD_CONFIG = 2
"""Exit status for a config that cannot be composed or fails validation."""

_FULL_ERROR_ENV = "HYDRA_FULL_ERROR"

_state: dict[str, bool] = {"training": False}
"""Set once :func:`run` hands over to verl: later errors are failures (traceback, exit 1), not bad configs."""


def check_engine_config(cfg: DictConfig) -> None:
    """Engine checks beyond :func:`validate_method_config`: the trainer this package supports.

    Raises:
        ConfigError: naming ``trainer.use_v1`` or ``trainer.v1.trainer_mode``.
    """
    if not cfg.trainer.get("use_v1", True):
        raise ConfigError(
            "trainer.use_v1=False selects verl's deprecated legacy RayPPOTrainer, which cepo does not support; "
            "use trainer.use_v1=True (verl's default)"
        )
    mode = cfg.trainer.v1.trainer_mode
    method = cfg.algorithm.adv_estimator
    if method != "grpo" and mode != TRAINER_MODE:
        raise ConfigError(
            f"trainer.v1.trainer_mode={mode!r} has no teacher passes; algorithm.adv_estimator={method!r} needs "
            f"trainer.v1.trainer_mode={TRAINER_MODE}"
        )


def _task_runner() -> Any:
    """verl's v1 task runner, importing our trainer/estimators inside the Ray actor before it runs."""
    import ray
    from verl.trainer.main_ppo import TaskRunnerV1

    class CEPOTaskRunner(TaskRunnerV1.__ray_actor_class__):  # type: ignore[name-defined,misc]
        def run(self, config: DictConfig) -> None:
            import cepo.integrations.verl.trainer  # noqa: F401  (registers cepo_sync + estimators)

            super().run(config)

    return ray.remote(CEPOTaskRunner)


def prepare(cfg: DictConfig) -> None:
    """Everything :func:`run` does before training: fill in ``cfg`` and validate it (ours and verl's checks).

    Raises:
        ConfigError: one line naming the key; verl's own ``validate_config`` errors are wrapped too.
    """
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    finalize_config(cfg)
    validate_method_config(cfg)
    check_engine_config(cfg)
    check_rollout_engine(cfg)  # before verl's check, which imports vLLM ("vllm version None not supported")
    auto_set_device(cfg)
    try:
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except (ValueError, TypeError, AssertionError) as err:
        text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        if not text:
            raise
        raise ConfigError(f"verl's config check failed: {text}") from err


def run(cfg: DictConfig) -> None:
    """Validate ``cfg`` and start verl training (needs GPUs and vLLM/SGLang)."""
    from verl.trainer.main_ppo import run_ppo

    prepare(cfg)
    import cepo.integrations.verl.estimators  # noqa: F401

    _state["training"] = True
    run_ppo(cfg, task_runner_class=_task_runner())


def preflight(argv: list[str], directory: Path) -> DictConfig | None:
    """Compose and validate the config Hydra is about to run or print, before Hydra does anything.

    Parses ``argv`` with Hydra's own argument parser (so every flag means what it means to Hydra) and, for a
    run or ``--cfg``, composes ``--config-name`` with the overrides through the Compose API. Skipped (returns
    ``None``) for ``--help``, ``--hydra-help``, ``--info``, ``--shell-completion`` and ``--multirun`` (sweep
    overrides do not compose as one config; each job is still validated by :func:`run`), and when
    ``--config-dir`` or a relative/``pkg://`` ``--config-path`` changes the search path.

    Returns:
        The composed, validated config, or ``None`` where skipped.

    Raises:
        ConfigError: the one-line error of :func:`compose_method_config` or :func:`check_engine_config`.
    """
    try:
        from hydra._internal.utils import get_args_parser
    except ImportError:  # a Hydra without this parser: validation still runs in run(), before training
        return None
    args = _parse_hydra_args(argv, get_args_parser())
    if args.help or args.hydra_help or args.info or args.shell_completion or args.multirun:
        return None
    if args.config_dir is not None or args.experimental_rerun is not None:
        return None
    primary = directory
    if args.config_path is not None:
        if not os.path.isabs(args.config_path):
            return None
        primary = Path(args.config_path)
    cfg = compose_method_config(args.config_name or DEFAULT_CONFIG_NAME, list(args.overrides), config_dir=primary)
    check_engine_config(cfg)
    return cfg


def check_data_files(cfg: DictConfig) -> None:
    """Every local ``data.train_files`` / ``data.val_files`` entry exists (remote ``scheme://`` entries are verl's to
    read), checked before Ray starts, so a missing file is one line naming it rather than a failure after the
    workers start.

    Raises:
        ConfigError: naming the key, the entry and the preparation script.
    """
    from omegaconf import OmegaConf

    script = "scripts/prepare_math.py" if "math" in str(OmegaConf.select(cfg, "data.train_files", default="")) \
        else "scripts/prepare_geo3k.py"
    for key in ("data.train_files", "data.val_files"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        entries = [value] if isinstance(value, str) else list(value)
        for entry in entries:
            path = str(entry)
            if "://" in path:
                continue
            if not Path(os.path.expanduser(path)).exists():
                raise ConfigError(f"{key} entry {path!r} does not exist; run {script} (or set DATA_DIR) or fix the "
                                  "path")


def _starts_training(argv: list[str]) -> bool:
    """Whether ``argv`` runs the job (not ``--cfg``/``--help``/...: those print and exit without Ray)."""
    from hydra._internal.utils import get_args_parser

    return _parse_hydra_args(argv, get_args_parser()).cfg is None


def _parse_hydra_args(argv: list[str], parser: Any) -> Any:
    """``argv`` parsed by Hydra's own argument parser; a bad flag (``--cfg jobs``) is one ``ConfigError`` line
    naming it and the choices, instead of Hydra's eight-line usage."""

    def error(message: str) -> NoReturn:
        raise ConfigError(f"{message} (see --help)")

    parser.error = error
    return parser.parse_args(argv)


@contextmanager
def _hydra_raises() -> Iterator[None]:
    """Make Hydra re-raise errors instead of printing its own report and exiting 1 (``run_and_report``)."""
    before = os.environ.get(_FULL_ERROR_ENV)
    os.environ[_FULL_ERROR_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_FULL_ERROR_ENV, None)
        else:
            os.environ[_FULL_ERROR_ENV] = before


def main(argv: list[str] | None = None) -> int:
    """Hydra entry point over ``configs/`` (default config: ``cepo``).

    Args:
        argv: the arguments after the program name (default ``sys.argv[1:]``).

    Returns:
        0 on success; 2 (with one line on stderr) for a config that cannot be composed or fails validation.
        Errors raised once training has started propagate with their traceback (exit status 1).
    """
    import hydra

    argv = list(sys.argv[1:] if argv is None else argv)
    full_error = os.environ.get(_FULL_ERROR_ENV) == "1"
    _state["training"] = False
    directory: Path | None = None
    saved_argv = sys.argv
    try:
        directory = configs_dir()
        cfg = preflight(argv, directory)
        if cfg is not None and _starts_training(argv):
            check_data_files(cfg)
            start_ray_checked(cfg)  # the cluster's GPUs, before Hydra writes its run folder (issue 19)
            prepare(cfg)
        app = hydra.main(config_path=str(directory), config_name=DEFAULT_CONFIG_NAME, version_base=None)(run)
        sys.argv = [saved_argv[0] if saved_argv else "cepo", *argv]  # hydra.main reads sys.argv
        with _hydra_raises():
            app()
    except Exception as err:
        if full_error or _state["training"]:
            raise
        message = config_error_message(err, directory)
        if message is None:
            raise
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
