"""Entry point: ``python -m cepo.integrations.verl.main --config-name cepo [hydra overrides]``.

Hydra composes ``configs/<name>.yaml`` with verl's own ``ppo_trainer`` config on the search path (the
same composition as :func:`cepo.integrations.verl.hydra_config.compose_method_config`), so every verl
override and Hydra flag works (``--cfg job``, ``--config-name grpo|rlsd|cepo``, ``cepo.lam0=0.3``).
The config is validated at start-up (every error names its key), then verl's own ``run_ppo`` starts
Ray and a task runner that uses our ``cepo_sync`` v1 trainer.
"""

from __future__ import annotations

import sys
from typing import Any

from omegaconf import DictConfig

from cepo.integrations.verl.hydra_config import TRAINER_MODE, configs_dir, finalize_config, validate_method_config


def check_engine_config(cfg: DictConfig) -> None:
    """Engine checks beyond :func:`validate_method_config`: the trainer this package supports."""
    if not cfg.trainer.get("use_v1", True):
        raise ValueError(
            "trainer.use_v1=False selects verl's deprecated legacy RayPPOTrainer, which cepo does not support; "
            "use trainer.use_v1=True (verl's default)"
        )
    mode = cfg.trainer.v1.trainer_mode
    method = cfg.algorithm.adv_estimator
    if method != "grpo" and mode != TRAINER_MODE:
        raise ValueError(
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


def run(cfg: DictConfig) -> None:
    """Validate ``cfg`` and start verl training (needs GPUs and vLLM/SGLang)."""
    from verl.trainer.main_ppo import run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    from verl.utils.device import auto_set_device

    finalize_config(cfg)
    validate_method_config(cfg)
    check_engine_config(cfg)
    import cepo.integrations.verl.estimators  # noqa: F401

    auto_set_device(cfg)
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    run_ppo(cfg, task_runner_class=_task_runner())


def main() -> None:
    """Hydra entry point over ``configs/`` (default config: ``cepo``)."""
    import hydra

    app = hydra.main(config_path=str(configs_dir()), config_name="cepo", version_base=None)(run)
    app()


if __name__ == "__main__":
    sys.exit(main())
