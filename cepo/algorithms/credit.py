"""Method registry: from sequence advantages and teacher log-probs to token advantages.

Every engine calls :func:`compute_token_advantages`; the per-method functions are
registered with :func:`register_credit` (the pattern of verl's ``register_adv_est``), so a
new credit-assignment method is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cepo.algorithms._checks import as_bool_mask, check_2d, check_same_shape
from cepo.algorithms.evidence import contrastive_delta, modulate_advantages, rlsd_delta
from cepo.algorithms.metrics import credit_metrics


@dataclass
class CreditInputs:
    """Everything a credit method may read, for one batch of B rollouts with T response tokens."""

    advantages: torch.Tensor  # (B,) sequence advantages, Eq. 1
    response_mask: torch.Tensor  # (B, T)
    lam: float
    eps_w: float
    logp_student: torch.Tensor | None = None  # (B, T) old log-probs, P_S
    logp_pos: torch.Tensor | None = None  # (B, T) P_T+ (hint = r+)
    logp_neg: torch.Tensor | None = None  # (B, T) P_T- (hint = r-)
    has_negative: torch.Tensor | None = None  # (B,) bool


CreditFn = Callable[[CreditInputs], tuple[torch.Tensor, torch.Tensor | None]]

CREDIT_REGISTRY: dict[str, CreditFn] = {}
TEACHER_PASSES: dict[str, tuple[str, ...]] = {}


def register_credit(name: str, teacher_passes: tuple[str, ...] = ()) -> Callable[[CreditFn], CreditFn]:
    """Register a credit method under ``name``; ``teacher_passes`` lists the hint contexts it needs
    (``"pos"`` for r+, ``"neg"`` for r-), so engines schedule exactly those log-prob passes."""

    def decorator(fn: CreditFn) -> CreditFn:
        if name in CREDIT_REGISTRY and CREDIT_REGISTRY[name] is not fn:
            raise ValueError(f"credit method {name!r} is already registered")
        CREDIT_REGISTRY[name] = fn
        TEACHER_PASSES[name] = tuple(teacher_passes)
        return fn

    return decorator


def get_credit_fn(name: str) -> CreditFn:
    """Look up a registered credit method; the error lists the known names."""
    if name not in CREDIT_REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(CREDIT_REGISTRY)}")
    return CREDIT_REGISTRY[name]


def teacher_passes(method: str, lam: float) -> tuple[str, ...]:
    """The teacher passes an engine must run for ``method`` at modulation strength ``lam``.

    With ``lam = 0`` Eq. 7 gives ``A_t = A`` (GRPO) whatever the teacher says, so no pass is needed and
    :func:`compute_token_advantages` returns the GRPO advantage without reading any log-prob.
    """
    get_credit_fn(method)
    return TEACHER_PASSES[method] if float(lam) != 0.0 else ()


def _require(inputs: CreditInputs, method: str, *names: str) -> None:
    for name in names:
        if getattr(inputs, name) is None:
            raise ValueError(f"method {method!r} needs {name}; run its teacher pass first")


@register_credit("grpo")
def grpo_credit(inputs: CreditInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GRPO: the sequence advantage of Eq. 1 on every response token."""
    mask = as_bool_mask("response_mask", inputs.response_mask)
    adv = inputs.advantages.detach().unsqueeze(-1).expand(mask.shape)
    return torch.where(mask, adv, torch.zeros_like(adv)), None


@register_credit("rlsd", teacher_passes=("pos",))
def rlsd_credit(inputs: CreditInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RLSD, Eq. 4: weights from ``P_T+ / P_S``."""
    _require(inputs, "rlsd", "logp_pos", "logp_student")
    delta = rlsd_delta(inputs.logp_pos, inputs.logp_student, inputs.response_mask)
    return modulate_advantages(inputs.advantages, delta, inputs.response_mask, inputs.lam, inputs.eps_w), delta


@register_credit("cepo", teacher_passes=("pos", "neg"))
def cepo_credit(inputs: CreditInputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CEPO, Eqs. 5 and 7: weights from ``P_T+ / P_T-``; RLSD for rows whose group has no r-."""
    _require(inputs, "cepo", "logp_pos", "logp_student", "has_negative")
    delta = contrastive_delta(
        inputs.logp_pos, inputs.logp_neg, inputs.logp_student, inputs.has_negative, inputs.response_mask
    )
    return modulate_advantages(inputs.advantages, delta, inputs.response_mask, inputs.lam, inputs.eps_w), delta


def compute_token_advantages(method: str, inputs: CreditInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """Token advantages and credit metrics for ``method`` (``grpo``, ``rlsd`` or ``cepo``).

    Returns ``(token_advantages (B, T), metrics)``; metrics carry ``lambda`` and, for the
    teacher-based methods while ``lam > 0``, :func:`cepo.algorithms.credit_metrics`. With ``lam = 0``
    every method is GRPO (Eq. 7) and needs no teacher log-probs (see :func:`teacher_passes`).
    """
    fn = get_credit_fn(method)
    if TEACHER_PASSES[method] and not teacher_passes(method, inputs.lam):
        fn = grpo_credit
    check_2d("response_mask", inputs.response_mask)
    if inputs.advantages.dim() != 1 or inputs.advantages.shape[0] != inputs.response_mask.shape[0]:
        raise ValueError(
            f"advantages must have shape ({inputs.response_mask.shape[0]},), one per rollout, "
            f"got {tuple(inputs.advantages.shape)}"
        )
    check_same_shape("response_mask", inputs.response_mask, logp_student=inputs.logp_student,
                     logp_pos=inputs.logp_pos, logp_neg=inputs.logp_neg)
    token_adv, delta = fn(inputs)
    metrics: dict[str, float] = {"lambda": float(inputs.lam)}
    if delta is not None:
        metrics.update(credit_metrics(inputs.advantages, delta, inputs.response_mask, token_adv, inputs.eps_w))
    if inputs.has_negative is not None:
        metrics["has_negative_frac"] = float(torch.as_tensor(inputs.has_negative).float().mean())
    return token_adv, metrics
