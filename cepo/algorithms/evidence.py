"""Evidence deltas, token weights and modulated advantages (paper Eqs. 4, 5 and 7)."""

from __future__ import annotations

import torch

from cepo.algorithms._checks import (
    as_bool_mask,
    check_2d,
    check_finite,
    check_lam_eps,
    check_same_shape,
)

# exp() of a larger exponent overflows float16; the clip in Eq. 7 caps the weight at
# 1 + eps_w < 2 anyway, so clamping the exponent never changes a modulated advantage.
_MAX_EXPONENT = 20.0


def contrastive_delta(
    logp_pos: torch.Tensor,
    logp_neg: torch.Tensor | None,
    logp_student: torch.Tensor,
    has_negative: torch.Tensor,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive evidence delta, Eq. 5: ``D_t = sg(log P_T+(y_t) - log P_T-(y_t))``.

    Rows with ``has_negative == False`` have no rejected rollout in their group (G- empty);
    for them ``P_T- := P_S`` (``logp_student`` replaces ``logp_neg``), which is exactly the
    RLSD delta of Eq. 4.

    Args:
        logp_pos: (B, T) log-probs of the sampled response tokens under the r+ context.
        logp_neg: (B, T) log-probs under the r- context, or ``None`` when no row has one.
        logp_student: (B, T) student log-probs (the old log-probs, no hint).
        has_negative: (B,) bool, whether each row's group has a rejected rollout.
        response_mask: optional (B, T) mask; NaN/inf is only an error at unmasked positions
            and masked positions of the result are 0.

    Returns:
        (B, T) detached delta.
    """
    check_2d("logp_pos", logp_pos)
    check_same_shape("logp_pos", logp_pos, logp_neg=logp_neg, logp_student=logp_student,
                     response_mask=response_mask)
    has_negative = torch.as_tensor(has_negative, device=logp_pos.device)
    if has_negative.dim() != 1 or has_negative.shape[0] != logp_pos.shape[0]:
        raise ValueError(
            f"has_negative must have shape ({logp_pos.shape[0]},), one flag per row, got {tuple(has_negative.shape)}"
        )
    has_negative = has_negative.bool()
    if logp_neg is None:
        if bool(has_negative.any()):
            raise ValueError("logp_neg is None but has_negative is True for some rows; pass the r- log-probs")
        logp_neg = logp_student
    mask = (
        torch.ones_like(logp_pos, dtype=torch.bool)
        if response_mask is None
        else as_bool_mask("response_mask", response_mask)
    )
    neg_rows = has_negative.unsqueeze(-1)
    check_finite("logp_pos", logp_pos, mask)
    check_finite("logp_neg", logp_neg, mask & neg_rows)
    check_finite("logp_student", logp_student, mask & ~neg_rows)
    reference = torch.where(neg_rows, logp_neg, logp_student)
    delta = (logp_pos - reference).detach()
    return torch.where(mask, delta, torch.zeros_like(delta))


def rlsd_delta(
    logp_pos: torch.Tensor,
    logp_student: torch.Tensor,
    response_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """RLSD evidence delta, Eq. 4: ``D_t = sg(log P_T+(y_t) - log P_S(y_t))``."""
    check_2d("logp_pos", logp_pos)
    no_negative = torch.zeros(logp_pos.shape[0], dtype=torch.bool, device=logp_pos.device)
    return contrastive_delta(logp_pos, None, logp_student, no_negative, response_mask)


def _token_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if advantages.dim() == 1:
        if advantages.shape[0] != like.shape[0]:
            raise ValueError(
                f"advantages has {advantages.shape[0]} rows but delta has {like.shape[0]}; one advantage per rollout"
            )
        return advantages.unsqueeze(-1).expand_as(like)
    check_same_shape("delta", like, advantages=advantages)
    return advantages


def evidence_weights(advantages: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Token weight, Eq. 7 (first line): ``w_t = exp(sign(A) * D_t)``, before clipping.

    ``advantages`` is (B,) or (B, T). The exponent is clamped to +-20 (see module note).
    """
    check_2d("delta", delta)
    adv = _token_advantages(advantages, delta)
    return torch.exp((torch.sign(adv) * delta).clamp(-_MAX_EXPONENT, _MAX_EXPONENT))


def modulate_advantages(
    advantages: torch.Tensor,
    delta: torch.Tensor,
    response_mask: torch.Tensor,
    lam: float,
    eps_w: float,
) -> torch.Tensor:
    """Token-level modulated advantage, Eq. 7 (and Eq. 4 when ``delta`` is the RLSD delta).

    ``A_t = A * [(1 - lam) + lam * clip(w_t, 1 - eps_w, 1 + eps_w)]`` with
    ``w_t = exp(sign(A) * D_t)``. The factor in brackets is positive for ``lam in [0, 1]`` and
    ``eps_w in (0, 1)``, so ``sign(A_t) = sign(A)`` (Theorem 1 (i)). ``lam = 0`` gives GRPO.

    Args:
        advantages: (B,) sequence advantages or (B, T) token advantages.
        delta: (B, T) evidence delta (``contrastive_delta`` or ``rlsd_delta``).
        response_mask: (B, T) 0/1 mask; masked positions of the result are 0.
        lam: modulation strength in [0, 1].
        eps_w: weight clip half-width in (0, 1).

    Returns:
        (B, T) detached token advantages.
    """
    check_lam_eps(lam, eps_w)
    check_2d("delta", delta)
    check_same_shape("delta", delta, response_mask=response_mask)
    mask = as_bool_mask("response_mask", response_mask)
    adv = _token_advantages(advantages.detach(), delta)
    check_finite("advantages", adv, mask)
    check_finite("delta", delta, mask)
    weights = evidence_weights(adv, delta.detach())
    factor = (1.0 - lam) + lam * weights.clamp(1.0 - eps_w, 1.0 + eps_w)
    out = adv * factor
    return torch.where(mask, out, torch.zeros_like(out)).detach()
