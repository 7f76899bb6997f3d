"""Trainer-side credit assignment on a verl ``DataProto``: hints r+/r- and the token modulation.

verl's registered estimators see no log-probs (``estimators.py``), so the trainer calls
:func:`apply_token_credit` right after verl's ``compute_advantage``. It reads the GRPO advantages,
``old_log_probs`` (P_S) and the teacher log-probs, and writes the token advantages of Eq. 4 (RLSD) or
Eq. 7 (CEPO) back into ``advantages``/``returns``; the PPO-clip surrogate is unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch

from cepo.algorithms import CreditInputs, compute_token_advantages, negative_hints, teacher_passes
from cepo.config import CEPOConfig
from cepo.rewards import extract_answer

POS_KEY = "teacher_pos_log_probs"
"""(B, T) log P_T+(y_t): response tokens under the r+ (ground-truth) context."""
NEG_KEY = "teacher_neg_log_probs"
"""(B, T) log P_T-(y_t): under the r- context; 0 on rows without a negative (G- empty)."""
HAS_NEG_KEY = "cepo_has_negative"
"""(B,) bool: the row's group has a rejected rollout with an answer (else the RLSD fallback)."""


def ground_truths_of(reward_model: Sequence[Any], labels: Sequence[str] | None = None) -> list[str]:
    """``non_tensor_batch["reward_model"][i]["ground_truth"]`` as strings; a missing one raises naming the row
    (``labels[i]`` when given, e.g. the rollout's key, else ``row i``)."""
    out: list[str] = []
    for row, item in enumerate(reward_model):
        gt = item.get("ground_truth") if isinstance(item, dict) else None
        if gt is None or str(gt).strip() == "":
            where = labels[row] if labels is not None else f"row {row}"
            raise ValueError(
                f"{where}: reward_model.ground_truth is missing or empty; r+ needs the answer "
                "(prepare the data with scripts/prepare_geo3k.py)"
            )
        out.append(str(gt))
    return out


def choose_hints(
    responses: Sequence[str],
    scores: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    ground_truths: Sequence[str],
    cepo: CEPOConfig,
) -> tuple[list[str], list[str | None], list[bool]]:
    """r+ and r- for every rollout (paper Sec. 3.4, Algorithm 1 line 5).

    r+ = the ground-truth answer. r- = the final answer (``cepo.rewards.extract_answer``) of the
    lowest-reward rejected rollout (reward < ``cepo.neg_threshold``) of the same group, via
    ``cepo.algorithms.negative_hints``; ``None`` when the group has none (G- empty: RLSD fallback).

    Returns:
        ``(pos_hints, neg_hints, has_negative)``.
    """
    if not len(responses) == len(group_ids) == len(ground_truths):
        raise ValueError(
            f"responses ({len(responses)}), group_ids ({len(group_ids)}) and ground_truths ({len(ground_truths)}) "
            "must have one entry per rollout"
        )
    answers = [extract_answer(text) for text in responses]
    neg, has_neg = negative_hints(answers, scores, group_ids, threshold=cepo.neg_threshold,
                                  require_answer=cepo.neg_requires_answer, reference=cepo.negative_reference)
    return [str(g) for g in ground_truths], neg, has_neg


def sequence_advantages(token_advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) sequence advantage A of each row from verl's (B, T) broadcast advantages (mean over its tokens)."""
    mask = response_mask.to(token_advantages.dtype)
    return (token_advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def apply_token_credit(
    data: Any, cepo: CEPOConfig, step: int, teacher_seconds: float | None = None
) -> dict[str, float]:
    """Replace ``data.batch["advantages"]`` (and ``returns``) with the token advantages of ``cepo.method``.

    Args:
        data: a ``verl.DataProto`` after ``compute_advantage`` with ``advantages``, ``response_mask``,
            ``old_log_probs`` and, for RLSD/CEPO while lambda > 0, :data:`POS_KEY` (and for CEPO
            :data:`NEG_KEY` and ``non_tensor_batch[HAS_NEG_KEY]``).
        cepo: the method settings.
        step: the 0-based training step (lambda schedule, ``cepo.warmup_steps``).
        teacher_seconds: wall time of the teacher passes, logged as ``cepo/teacher_time_s``.

    Returns:
        Metrics prefixed ``cepo/``: ``lambda``, the delta sign fractions split by the sign of A
        (Fig. 4), ``clip_rate``, ``adv_abs_mean_before/after``, ``has_negative_frac``, ``teacher_time_s``.
    """
    lam = cepo.schedule(step)
    metrics: dict[str, float] = {"cepo/lambda": float(lam)}
    if teacher_seconds is not None:
        metrics["cepo/teacher_time_s"] = float(teacher_seconds)
    passes = teacher_passes(cepo.method, lam)
    if not passes:
        return metrics
    batch = data.batch
    for key in ("advantages", "response_mask", "old_log_probs", *([POS_KEY] if "pos" in passes else [])):
        if key not in batch.keys():  # noqa: SIM118 (TensorDict)
            raise KeyError(f"apply_token_credit needs data.batch[{key!r}] for method {cepo.method!r}")
    mask = batch["response_mask"]
    seq_adv = sequence_advantages(batch["advantages"].float(), mask)
    has_neg = None
    logp_neg = None
    if "neg" in passes:
        if HAS_NEG_KEY not in data.non_tensor_batch:
            raise KeyError(f"apply_token_credit needs data.non_tensor_batch[{HAS_NEG_KEY!r}] for method 'cepo'")
        has_neg = torch.as_tensor(np.asarray(data.non_tensor_batch[HAS_NEG_KEY], dtype=bool))
        logp_neg = batch[NEG_KEY].float() if NEG_KEY in batch.keys() else None  # noqa: SIM118
    inputs = CreditInputs(
        advantages=seq_adv,
        response_mask=mask,
        lam=lam,
        eps_w=cepo.eps_w,
        logp_student=batch["old_log_probs"].float(),
        logp_pos=batch[POS_KEY].float(),
        logp_neg=logp_neg,
        has_negative=has_neg,
    )
    token_adv, credit = compute_token_advantages(cepo.method, inputs)
    token_adv = token_adv.to(batch["advantages"].dtype)
    batch["advantages"] = token_adv
    batch["returns"] = token_adv.clone()
    metrics.update({f"cepo/{k}": float(v) for k, v in credit.items()})
    return metrics
