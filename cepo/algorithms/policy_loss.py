"""The PPO clipped surrogate that consumes (modulated) token advantages (paper Sec. 3.4)."""

from __future__ import annotations

import torch

from cepo.algorithms._checks import as_bool_mask, check_2d, check_same_shape


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
) -> torch.Tensor:
    """Token-mean PPO-clip loss with token advantages ``A_t`` in place of ``A`` (Eq. 7, Alg. 1 line 10).

    ``L = mean_t max(-A_t * rho_t, -A_t * clip(rho_t, 1 - clip_low, 1 + clip_high))`` with
    ``rho_t = exp(logp - old_logp)``. ``advantages`` is treated as a constant: its gradient is
    cut, so the only path to the parameters is ``log pi(y_t)`` of the sampled tokens
    (Theorem 1 (ii)). Defaults follow the authors' GRPO script (0.2 / 0.28).
    """
    check_2d("logp", logp)
    check_same_shape("logp", logp, old_logp=old_logp, response_mask=response_mask)
    mask = as_bool_mask("response_mask", response_mask)
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv.unsqueeze(-1).expand_as(logp)
    check_same_shape("logp", logp, advantages=adv)
    ratio = torch.exp((logp - old_logp.detach()).clamp(-20.0, 20.0))
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    count = mask.sum().clamp(min=1)
    return (per_token * mask).sum() / count
