"""Group-relative outcome advantage (paper Eq. 1)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def group_advantages(
    scores: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """GRPO outcome advantage, Eq. 1: ``A_i = (R_i - mean_G R) / (std_G R + eps)``.

    Matches verl's ``compute_grpo_outcome_advantage`` exactly: unbiased (Bessel) standard
    deviation, ``eps`` added to the std, and a group with a single rollout gets mean 0 and
    std 1 (its advantage is ``score / (1 + eps)``). ``norm_by_std=False`` gives ``R - mean`` (Dr.GRPO).

    Args:
        scores: (B,) scalar reward per rollout (a tensor, or a sequence taken as float32).
        group_ids: B hashable ids (strings or ints); rows with equal ids form one group.
        norm_by_std: divide by the group std (GRPO) or not (Dr.GRPO).
        eps: added to the std.

    Returns:
        (B,) advantages, detached, in the dtype of ``scores``.
    """
    if not isinstance(scores, torch.Tensor):
        try:
            scores = torch.as_tensor(scores, dtype=torch.float32)
        except (TypeError, ValueError) as err:
            raise ValueError(f"scores must be a 1-D tensor or sequence of per-rollout rewards: {err}") from err
    if scores.dim() != 1:
        raise ValueError(f"scores must be a 1-D tensor of per-rollout rewards, got shape {tuple(scores.shape)}")
    if len(group_ids) != scores.shape[0]:
        raise ValueError(
            f"group_ids has {len(group_ids)} entries but scores has {scores.shape[0]}; give one id per rollout"
        )
    if scores.numel() == 0:
        raise ValueError("scores is empty: a batch needs at least one rollout")
    if not torch.isfinite(scores).all():
        rows = torch.nonzero(~torch.isfinite(scores)).flatten().tolist()
        raise ValueError(f"scores contains NaN or inf at rows {rows[:8]}; fix the reward function")

    members: dict[Hashable, list[int]] = {}
    for row, gid in enumerate(group_ids):
        members.setdefault(gid, []).append(row)

    scores = scores.detach()
    out = torch.empty_like(scores)
    for rows in members.values():
        index = torch.tensor(rows, device=scores.device)
        group = scores[index]
        if len(rows) == 1:
            mean, std = torch.zeros((), dtype=scores.dtype), torch.ones((), dtype=scores.dtype)
        else:
            mean, std = torch.mean(group), torch.std(group)
        out[index] = (group - mean) / (std + eps) if norm_by_std else group - mean
    return out
