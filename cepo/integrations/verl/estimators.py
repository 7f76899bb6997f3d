"""verl advantage estimators for every non-GRPO method (``rlsd``, ``cepo``, ``opsd``, ``sdpo``, ``conspo``),
registered with ``register_adv_est``.

A registered verl estimator only receives the rewards, the response mask, the group ids and
``algorithm`` config, so it cannot see any log-prob. The estimators therefore return the GRPO group
advantage of paper Eq. 1 broadcast over the response; the method's token advantages (Eq. 4 / Eq. 7, the
distillation advantage, ConSPO's score gradient) are applied afterwards by the trainer
(``cepo.integrations.verl.credit.apply_token_credit``), around verl's ``compute_advantage``.

Outside that trainer (another ``trainer.v1.trainer_mode``, a verl recipe, a user script) the estimators would
silently train GRPO under another method's name, so they raise unless called inside :func:`cepo_trainer_advantage`,
which ``CEPOTrainerSync._compute_advantage`` enters around verl's advantage step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, register_adv_est

from cepo.algorithms import METHODS, group_advantages
from cepo.recipes import TRAINER_MODE

GRPO_EPS = 1e-6
"""verl's ``compute_grpo_outcome_advantage`` epsilon."""

_INSIDE_TRAINER: ContextVar[bool] = ContextVar("cepo_trainer_advantage", default=False)


@contextmanager
def cepo_trainer_advantage() -> Iterator[None]:
    """While inside, the estimators may run: the caller (``CEPOTrainerSync``) applies the method's token credit to
    their GRPO advantage afterwards."""
    token = _INSIDE_TRAINER.set(True)
    try:
        yield
    finally:
        _INSIDE_TRAINER.reset(token)


def group_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    config: Any = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 1 on every response token: ``A_i = (R_i - mean_G R) / (std_G R + eps)``, returns = advantages.

    ``R_i`` is the sum of the token-level rewards of row ``i``; groups are rows with equal ``index``
    (verl's ``uid``); ``algorithm.norm_adv_by_std_in_grpo=False`` gives ``R - mean`` (Dr.GRPO).
    """
    if not _INSIDE_TRAINER.get():
        name = config.get("adv_estimator", None) if config is not None else None
        raise RuntimeError(
            f"algorithm.adv_estimator={name or '/'.join(sorted(m for m in METHODS if m != 'grpo'))} is computed by "
            f"cepo's verl trainer only (outside it, it would be plain GRPO): set "
            f"trainer.v1.trainer_mode={TRAINER_MODE} (python -m cepo.integrations.verl.main does), or "
            "algorithm.adv_estimator=grpo"
        )
    norm = True if config is None else bool(config.get("norm_adv_by_std_in_grpo", True))
    scores = (token_level_rewards * response_mask).sum(dim=-1)
    adv = group_advantages(scores.float(), list(index), norm_by_std=norm, eps=GRPO_EPS).to(token_level_rewards.dtype)
    token_adv = adv.unsqueeze(-1) * response_mask
    return token_adv, token_adv


def _register(name: str) -> None:
    if ADV_ESTIMATOR_REGISTRY.get(name) is not group_outcome_advantage:
        register_adv_est(name)(group_outcome_advantage)


for _name in sorted(METHODS):
    if _name != "grpo":  # verl's own
        _register(_name)
