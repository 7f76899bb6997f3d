"""Group-relative outcome advantage (paper Eq. 1)."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def group_advantages(
    scores: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    norm_by_std: bool = True,
    eps: float = 1e-6,
    skip_nan: bool = False,
) -> torch.Tensor:
    """GRPO outcome advantage, Eq. 1: ``A_i = (R_i - mean_G R) / (std_G R + eps)``.

    Matches verl's ``compute_grpo_outcome_advantage`` exactly: unbiased (Bessel) standard
    deviation, ``eps`` added to the std, and a group with a single rollout gets mean 0 and
    std 1 (its advantage is ``score / (1 + eps)``). ``norm_by_std=False`` gives ``R - mean`` (Dr.GRPO).

With ``skip_nan=True`` a NaN score marks an *unscorable* rollout (every reward function returned
``None``), as TRL does: it is left out of its group's mean and std and its advantage is 0. A group
of several rollouts with fewer than two scored ones has no contrast, so its scored rollout gets 0
too (TRL's NaN-aware statistics give the same). Without it a NaN score is an error.

    Args:
        scores: (B,) scalar reward per rollout (a tensor, or a sequence taken as float32).
        group_ids: B hashable ids (strings or ints); rows with equal ids form one group.
        norm_by_std: divide by the group std (GRPO) or not (Dr.GRPO).
        eps: added to the std.
        skip_nan: treat NaN scores as unscorable rollouts (advantage 0) instead of raising.

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
    bad = torch.isinf(scores) if skip_nan else ~torch.isfinite(scores)
    if bad.any():
        rows = torch.nonzero(bad).flatten().tolist()
        kind = "inf" if skip_nan else "NaN or inf"
        raise ValueError(f"scores contains {kind} at rows {rows[:8]}; fix the reward function")

    members: dict[Hashable, list[int]] = {}
    for row, gid in enumerate(group_ids):
        members.setdefault(gid, []).append(row)

    scores = scores.detach()
    out = torch.empty_like(scores)
    for all_rows in members.values():
        rows = [r for r in all_rows if not torch.isnan(scores[r])] if skip_nan else all_rows
        out[torch.tensor(all_rows, device=scores.device)] = 0.0
        if not rows or (len(rows) == 1 and len(all_rows) > 1):
            continue  # unscorable rows, or a single scored rollout with nothing to contrast with
        index = torch.tensor(rows, device=scores.device)
        group = scores[index]
        if len(rows) == 1:
            mean, std = torch.zeros((), dtype=scores.dtype), torch.ones((), dtype=scores.dtype)
        else:
            mean, std = torch.mean(group), torch.std(group)
        out[index] = (group - mean) / (std + eps) if norm_by_std else group - mean
    return out
