"""The math of CEPO and its baselines: pure torch, no engine imports.

Every function names the paper equation it implements (arXiv 2605.19436, Sec. 3).
"""

from cepo.algorithms.advantages import group_advantages
from cepo.algorithms.credit import (
    CREDIT_REGISTRY,
    TEACHER_PASSES,
    CreditInputs,
    compute_token_advantages,
    get_credit_fn,
    register_credit,
    teacher_passes,
)
from cepo.algorithms.evidence import contrastive_delta, evidence_weights, modulate_advantages, rlsd_delta
from cepo.algorithms.metrics import credit_metrics
from cepo.algorithms.policy_loss import ppo_clip_loss
from cepo.algorithms.references import NEGATIVE_REFERENCES, negative_hints, select_negative_reference
from cepo.algorithms.schedules import LambdaSchedule, constant_lambda, linear_lambda

__all__ = [
    "CREDIT_REGISTRY",
    "NEGATIVE_REFERENCES",
    "TEACHER_PASSES",
    "CreditInputs",
    "LambdaSchedule",
    "compute_token_advantages",
    "constant_lambda",
    "contrastive_delta",
    "credit_metrics",
    "evidence_weights",
    "get_credit_fn",
    "group_advantages",
    "linear_lambda",
    "modulate_advantages",
    "negative_hints",
    "ppo_clip_loss",
    "register_credit",
    "rlsd_delta",
    "select_negative_reference",
    "teacher_passes",
]
