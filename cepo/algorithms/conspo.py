"""ConSPO: sequence-level contrastive policy optimisation (Zhang et al., arXiv 2605.12969).

See ``../shared/paper/conspo-method.md``. Per query q with G rollouts, the score of a rollout is its
length-normalised log-likelihood under the current policy (no old policy, no IS ratio, no clipping)::

    s(o) = (1/|o|) Σ_t log π_θ(o_t | q, o_<t)

and each positive is contrasted with the group's negatives in an InfoNCE with temperature τ and a
margin m_t on the positive (Eq. 13)::

    Ĵ(q) = (1/N⁺) Σ_i τ·log[ e^{(s_i⁺ - m)/τ} / (e^{(s_i⁺ - m)/τ} + Σ_j e^{s_j⁻/τ}) ]

The loss to minimise is ``-mean_q Ĵ(q)`` over the *valid* groups (at least one positive and one
negative; the paper discards all-correct and all-wrong groups). Lemma 2 gives its gradient in closed
form, :func:`conspo_coefficients`, so an engine that never sees a whole group in one micro-batch can
train the same objective as a per-row weighted log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from cepo.algorithms._checks import as_bool_mask, check_2d, check_same_shape


def conspo_margin(progress: float, target_margin: float, warmup_ratio: float) -> float:
    """Half-cosine margin curriculum (ConSPO §4.3): ``m = M/2·(1 - cos(π·min(progress/α, 1)))``.

    Ramps from 0 at ``progress = 0`` to ``M`` at ``progress = α`` (``warmup_ratio``), then stays at ``M``.
    Paper defaults: ``M = 0.01``, ``α = 0.3``.

    Args:
        progress: normalised training progress λ_t in [0, 1] (e.g. ``step / total_steps``).
        target_margin: M, the final margin (>= 0).
        warmup_ratio: α in (0, 1], the fraction of training over which the margin ramps up.
    """
    progress, target_margin, warmup_ratio = float(progress), float(target_margin), float(warmup_ratio)
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress must be in [0, 1] (normalised training progress), got {progress}")
    if not (math.isfinite(target_margin) and target_margin >= 0.0):
        raise ValueError(f"target_margin must be a finite number >= 0 (ConSPO's M), got {target_margin}")
    if not 0.0 < warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in (0, 1] (ConSPO's α), got {warmup_ratio}")
    rho = min(progress / warmup_ratio, 1.0)
    return target_margin / 2.0 * (1.0 - math.cos(math.pi * rho))


def conspo_scores(logp: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """ConSPO score, the length-normalised sequence log-probability: ``s = Σ_t m_t·logp_t / Σ_t m_t``.

    Args:
        logp: (B, T) log-probs of the sampled tokens under the *current* policy (with gradient).
        response_mask: (B, T) 0/1 or bool mask; every row needs at least one response token.

    Returns:
        (B,) scores, differentiable w.r.t. ``logp``. Masked positions (even NaN ones) do not contribute.
    """
    check_2d("logp", logp)
    check_same_shape("logp", logp, response_mask=response_mask)
    mask = as_bool_mask("response_mask", response_mask)
    lengths = mask.sum(dim=-1)
    if bool((lengths == 0).any()):
        rows = torch.nonzero(lengths == 0).flatten().tolist()
        raise ValueError(f"response_mask has rows with no response token (rows {rows[:8]}): their score is undefined")
    values = logp[mask]
    if not torch.isfinite(values).all():
        raise ValueError("logp contains NaN or inf at response positions; check the log-prob pass")
    total = torch.where(mask, logp, torch.zeros_like(logp)).sum(dim=-1)
    return total / lengths.to(logp.dtype)


def _groups(
    scores: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    tau: float,
    margin: float,
    threshold: float,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Validate the inputs; return ``[(positive_rows, negative_rows)]`` of the valid groups, in order of first row."""
    if not isinstance(scores, torch.Tensor) or scores.dim() != 1:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a 1-D tensor, one score per rollout, got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be a floating-point tensor, got dtype {scores.dtype}")
    batch = scores.shape[0]
    if not torch.isfinite(scores.detach()).all():
        raise ValueError("scores contains NaN or inf; check the log-probs they were computed from")
    try:
        rewards = torch.as_tensor(rewards).detach().to("cpu", torch.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"rewards must be a 1-D tensor or sequence of per-rollout rewards: {err}") from err
    if rewards.dim() != 1 or rewards.shape[0] != batch:
        raise ValueError(f"rewards must have shape ({batch},), one per score, got {tuple(rewards.shape)}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contains NaN or inf; fix the reward function")
    ids = group_ids.tolist() if isinstance(group_ids, torch.Tensor) else list(group_ids)
    if len(ids) != batch:
        raise ValueError(f"group_ids has {len(ids)} entries but scores has {batch}; give one id per rollout")
    tau = float(tau)
    if not (math.isfinite(tau) and tau > 0.0):
        raise ValueError(f"tau must be a finite number > 0 (the contrastive temperature), got {tau}")
    if not math.isfinite(float(margin)):
        raise ValueError(f"margin must be finite, got {margin}")
    if not math.isfinite(float(threshold)):
        raise ValueError(f"threshold must be finite, got {threshold}")

    members: dict[Hashable, list[int]] = {}
    for row, gid in enumerate(ids):
        members.setdefault(gid, []).append(row)
    positive = (rewards >= float(threshold)).tolist()
    valid = []
    for rows in members.values():
        pos = [r for r in rows if positive[r]]
        neg = [r for r in rows if not positive[r]]
        if pos and neg:  # an all-correct or all-wrong group has no contrast: skipped
            valid.append((torch.tensor(pos, device=scores.device), torch.tensor(neg, device=scores.device)))
    return valid


def conspo_loss(
    scores: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    tau: float,
    margin: float,
    threshold: float = 0.5,
) -> torch.Tensor:
    """ConSPO loss, ``-mean_q Ĵ(q)`` over the valid groups (Eq. 13), as a scalar to minimise.

    ``Ĵ(q) = (τ/N⁺) Σ_i log_softmax([(s_i⁺ - m)/τ, s_1⁻/τ, …, s_N⁻⁻/τ])[0]``: each positive against the
    group's negatives only (other positives are not in its denominator), the margin on the positive only,
    computed with logsumexp (stable for any score scale and temperature).

    Args:
        scores: (B,) scores (:func:`conspo_scores`), carrying the gradient.
        rewards: (B,) rewards; a rollout with ``reward >= threshold`` is a positive, else a negative.
        group_ids: B hashable ids (or a (B,) tensor); equal ids form one query's group.
        tau: temperature τ > 0 (paper: 10).
        margin: m_t for this step (:func:`conspo_margin`).
        threshold: reward at or above which a rollout is a positive.

    Returns:
        0-dim tensor. When no group has both a positive and a negative it is a zero that is still
        connected to ``scores`` (its gradient is 0).
    """
    valid = _groups(scores, rewards, group_ids, tau, margin, threshold)
    if not valid:
        return scores.sum() * 0.0
    tau, margin = float(tau), float(margin)
    objectives = []
    for pos, neg in valid:
        pos_logits = (scores[pos] - margin) / tau  # (N+,)
        neg_lse = torch.logsumexp(scores[neg] / tau, dim=0)  # log Σ_j e^{s_j⁻/τ}
        log_p_pos = pos_logits - torch.logaddexp(pos_logits, neg_lse)  # log P_i⁺, (N+,)
        objectives.append(tau * log_p_pos.mean())  # Ĵ(q)
    return -torch.stack(objectives).mean()


def conspo_coefficients(
    scores: torch.Tensor,
    rewards: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable] | torch.Tensor,
    tau: float,
    margin: float,
    threshold: float = 0.5,
) -> torch.Tensor:
    """The gradient of :func:`conspo_loss` w.r.t. ``scores`` in closed form (Lemma 2), detached: (B,).

    With ``P_i⁺ = e^{(s_i⁺-m)/τ} / D_i`` and ``P_ij⁻ = e^{s_j⁻/τ} / D_i`` where
    ``D_i = e^{(s_i⁺-m)/τ} + Σ_k e^{s_k⁻/τ}``, and Q the number of valid groups:

    * positive i: ``∂Ĵ/∂s_i⁺ = (1 - P_i⁺)/N⁺``, so ``c_i = -(1 - P_i⁺) / (N⁺·Q)``;
    * negative j: ``∂Ĵ/∂s_j⁻ = -(1/N⁺) Σ_i P_ij⁻ = -(e^{s_j⁻/τ}/N⁺) Σ_i 1/D_i``, so
      ``c_j = (1/(N⁺·Q)) Σ_i P_ij⁻``;
    * rows of skipped groups: 0.

    Within a group the coefficients sum to 0. Since the loss depends on the policy only through the
    scores, ``Σ_k c_k·s_k`` (c detached) has the gradient of the loss: an engine whose loss cannot see
    whole groups (verl micro-batches) trains ConSPO exactly, at the policy the scores were computed with,
    as a per-row weighted log-likelihood ``Σ_k c_k·(1/|o_k|) Σ_t log π(o_k,t)``, *summed* (not averaged)
    over micro-batches since the 1/Q of the group mean is already in ``c``.
    """
    valid = _groups(scores, rewards, group_ids, tau, margin, threshold)
    s = scores.detach()
    coef = torch.zeros_like(s)
    if not valid:
        return coef
    tau, margin, n_groups = float(tau), float(margin), len(valid)
    for pos, neg in valid:
        pos_logits = (s[pos] - margin) / tau
        neg_logits = s[neg] / tau
        neg_lse = torch.logsumexp(neg_logits, dim=0)
        log_d = torch.logaddexp(pos_logits, neg_lse)  # log D_i, (N+,)
        n_pos = pos.numel()
        # 1 - P_i⁺ = Σ_j P_ij⁻ = exp(log Σ_j e^{s_j⁻/τ} - log D_i): no cancellation when P_i⁺ is near 1
        coef[pos] = -torch.exp(neg_lse - log_d) / (n_pos * n_groups)
        # Σ_i P_ij⁻ = exp(s_j⁻/τ + logsumexp_i(-log D_i))
        coef[neg] = torch.exp(neg_logits + torch.logsumexp(-log_d, dim=0)) / (n_pos * n_groups)
    return coef
