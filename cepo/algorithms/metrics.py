"""Token-level credit metrics (paper Fig. 4 delta sign fractions, Fig. 5 clip rate)."""

from __future__ import annotations

import torch

from cepo.algorithms._checks import as_bool_mask, check_2d, check_same_shape
from cepo.algorithms.evidence import evidence_weights


def _frac(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    count = int(denominator.sum())
    return float((numerator & denominator).sum()) / count if count else 0.0


def credit_metrics(
    advantages: torch.Tensor,
    delta: torch.Tensor,
    response_mask: torch.Tensor,
    modulated: torch.Tensor,
    eps_w: float,
) -> dict[str, float]:
    """Summary of one batch's token credit.

    Keys (over unmasked response tokens; the delta statistics only over tokens with A != 0, the
    ones that receive credit — rows with A = 0 may skip their teacher passes):
      ``delta_pos_frac`` / ``delta_neg_frac``: fraction with D_t > 0 / D_t < 0 (Fig. 4),
      the same split by the sign of A (``..._adv_pos`` / ``..._adv_neg``),
      ``delta_mean``, ``delta_abs_mean``,
      ``weight_mean``: mean unclipped w_t over tokens with A != 0,
      ``clip_rate``: fraction of tokens with A != 0 whose w_t lies outside [1 - eps_w, 1 + eps_w],
      ``adv_abs_mean_before`` / ``adv_abs_mean_after``: mean |A| before and |A_t| after modulation.
    """
    check_2d("delta", delta)
    check_same_shape("delta", delta, response_mask=response_mask, modulated=modulated)
    mask = as_bool_mask("response_mask", response_mask)
    adv = advantages.unsqueeze(-1).expand_as(delta) if advantages.dim() == 1 else advantages
    adv_pos, adv_neg = mask & (adv > 0), mask & (adv < 0)
    active = mask & (adv != 0)
    weights = evidence_weights(adv, delta)
    clipped = (weights < 1.0 - eps_w) | (weights > 1.0 + eps_w)
    n_tokens = int(mask.sum())
    n_active = int(active.sum())
    return {
        "delta_pos_frac": _frac(delta > 0, active),
        "delta_neg_frac": _frac(delta < 0, active),
        "delta_pos_frac_adv_pos": _frac(delta > 0, adv_pos),
        "delta_neg_frac_adv_pos": _frac(delta < 0, adv_pos),
        "delta_pos_frac_adv_neg": _frac(delta > 0, adv_neg),
        "delta_neg_frac_adv_neg": _frac(delta < 0, adv_neg),
        "delta_mean": float(delta[active].mean()) if n_active else 0.0,
        "delta_abs_mean": float(delta[active].abs().mean()) if n_active else 0.0,
        "weight_mean": float(weights[active].mean()) if n_active else 1.0,
        "clip_rate": _frac(clipped, active),
        "adv_abs_mean_before": float(adv[mask].abs().mean()) if n_tokens else 0.0,
        "adv_abs_mean_after": float(modulated[mask].abs().mean()) if n_tokens else 0.0,
    }


LAMBDA_METRIC = "cepo/lambda"


def logged_metrics(method: str, metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` without the ones ``method`` does not have: λ (``cepo/lambda``) only for the methods it modulates
    (``MethodSpec.lambda_gated``: RLSD, CEPO), so GRPO, OPSD, SDPO and ConSPO neither print nor plot a λ."""
    from cepo.algorithms.credit import get_method

    if get_method(method).lambda_gated:
        return metrics
    return {k: v for k, v in metrics.items() if k != LAMBDA_METRIC}
