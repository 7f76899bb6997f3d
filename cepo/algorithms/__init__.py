"""The math of CEPO and its baselines: pure torch, no engine imports.

Every function names the paper equation it implements (arXiv 2605.19436, Sec. 3).
"""

from cepo.algorithms.advantages import group_advantages
from cepo.algorithms.conspo import conspo_coefficients, conspo_loss, conspo_margin, conspo_scores
from cepo.algorithms.credit import (
    CREDIT_REGISTRY,
    DISTILL_MODES,
    HINT_KINDS,
    METHODS,
    TEACHER_PASSES,
    CreditInputs,
    MethodSpec,
    TeacherPlan,
    compute_token_advantages,
    get_credit_fn,
    get_method,
    loss_teacher,
    plan_teacher_passes,
    register_method,
    rollout_scores,
    sequence_advantages,
    teacher_passes,
)
from cepo.algorithms.divergence import (
    divergence_on_teacher_topk,
    gather_support,
    importance_weight,
    logits_distillation_loss,
    renormalize,
    sampled_token_advantage,
    sampled_token_logps,
    token_chunk_size,
    token_divergence,
    topk_distillation_loss,
    topk_divergence,
    topk_support,
    with_tail_bucket,
)
from cepo.algorithms.ema import ema_update_
from cepo.algorithms.evidence import contrastive_delta, evidence_weights, modulate_advantages, rlsd_delta
from cepo.algorithms.metrics import credit_metrics
from cepo.algorithms.references import (
    NEGATIVE_REFERENCES,
    demonstration_rows,
    negative_hints,
    select_negative_reference,
    strip_thinking,
)
from cepo.algorithms.schedules import LambdaSchedule, constant_lambda, linear_lambda

__all__ = [
    "CREDIT_REGISTRY",
    "DISTILL_MODES",
    "HINT_KINDS",
    "METHODS",
    "NEGATIVE_REFERENCES",
    "TEACHER_PASSES",
    "CreditInputs",
    "LambdaSchedule",
    "MethodSpec",
    "TeacherPlan",
    "compute_token_advantages",
    "conspo_coefficients",
    "conspo_loss",
    "conspo_margin",
    "conspo_scores",
    "constant_lambda",
    "contrastive_delta",
    "credit_metrics",
    "demonstration_rows",
    "divergence_on_teacher_topk",
    "ema_update_",
    "evidence_weights",
    "gather_support",
    "get_credit_fn",
    "get_method",
    "group_advantages",
    "importance_weight",
    "linear_lambda",
    "logits_distillation_loss",
    "loss_teacher",
    "modulate_advantages",
    "negative_hints",
    "plan_teacher_passes",
    "register_method",
    "renormalize",
    "rlsd_delta",
    "rollout_scores",
    "sampled_token_advantage",
    "sampled_token_logps",
    "select_negative_reference",
    "sequence_advantages",
    "strip_thinking",
    "teacher_passes",
    "token_chunk_size",
    "token_divergence",
    "topk_distillation_loss",
    "topk_divergence",
    "topk_support",
    "with_tail_bucket",
]
