"""Trainer-side credit assignment on a verl ``DataProto``: the teacher log-probs and the token advantages.

verl's registered estimators see no log-probs (``estimators.py``), so the trainer calls
:func:`apply_token_credit` right after verl's ``compute_advantage``. It reads the GRPO advantages (or, for ConSPO,
the rewards and ``old_log_probs``), ``old_log_probs`` (P_S) and the teacher log-probs the method declared, and
writes the method's token advantages (``cepo.algorithms.compute_token_advantages``) back into
``advantages``/``returns``; the PPO-clip surrogate is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cepo.algorithms import (
    CreditInputs,
    compute_token_advantages,
    get_method,
    loss_teacher,
    rollout_scores,
    sequence_advantages,
    teacher_passes,
)
from cepo.algorithms.metrics import logged_metrics
from cepo.config import CEPOConfig

POS_KEY = "teacher_pos_log_probs"
"""(B, T) log P_T+(y_t): response tokens under the r+ (ground-truth) context."""
NEG_KEY = "teacher_neg_log_probs"
"""(B, T) log P_T-(y_t): under the r- context; 0 on rows without a negative (G- empty)."""
DEMO_KEY = "teacher_demo_log_probs"
"""(B, T) log P_T(y_t) under SDPO's context (a successful peer rollout); 0 on rows without one."""
KIND_KEYS = {"pos": POS_KEY, "neg": NEG_KEY, "demo": DEMO_KEY}
"""Teacher context kind (``cepo.algorithms.HINT_KINDS``) -> the batch field holding its log-probs."""
HAS_NEG_KEY = "cepo_has_negative"
"""(B,) bool: the row's group has a rejected rollout with an answer (else the RLSD fallback)."""
HAS_TEACHER_KEY = "cepo_has_teacher"
"""(B,) bool: the row's distillation teacher row was scored (OPSD / SDPO)."""


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


def row_advantages(token_advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """(B,) sequence advantage A of each row from verl's (B, T) broadcast advantages (mean over its tokens)."""
    mask = response_mask.to(token_advantages.dtype)
    return (token_advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def apply_token_credit(
    data: Any, cepo: CEPOConfig, step: int, teacher_seconds: float | None = None, progress: float = 0.0
) -> dict[str, float]:
    """Replace ``data.batch["advantages"]`` (and ``returns``) with the token advantages of ``cepo.method``.

    Args:
        data: a ``verl.DataProto`` after ``compute_advantage`` with ``advantages``, ``response_mask``,
            ``old_log_probs``, the teacher log-probs of the method's contexts this step (:data:`KIND_KEYS`) and the
            flags :data:`HAS_NEG_KEY` / :data:`HAS_TEACHER_KEY` in ``non_tensor_batch``; for ConSPO also
            ``rm_scores`` and ``non_tensor_batch["uid"]`` (its sequence advantage needs the rewards and groups).
        cepo: the method settings.
        step: the 0-based training step (lambda schedule, ``cepo.warmup_steps``).
        teacher_seconds: wall time of the teacher passes, logged as ``cepo/teacher_time_s``.
        progress: fraction of training done, in [0, 1] (ConSPO's margin curriculum).

    Returns:
        Metrics prefixed ``cepo/``: ``lambda``, the credit metrics of ``compute_token_advantages`` (Fig. 4 delta
        sign fractions, ``clip_rate``, ...), ``teacher_time_s``.
    """
    spec = get_method(cepo.method)
    lam = cepo.schedule(step)
    # top-k / full mode: the divergence is the workers' loss term; the advantage is GRPO's (its PG share)
    kinds = () if loss_teacher(cepo.method, cepo.distill.mode) is not None else teacher_passes(cepo.method, lam)
    metrics: dict[str, float] = {"cepo/lambda": float(lam)}
    if teacher_seconds is not None:
        metrics["cepo/teacher_time_s"] = float(teacher_seconds)
    if not kinds and spec.sequence_advantage == "grpo":
        return logged_metrics(cepo.method, metrics)  # GRPO: verl's own advantages stay
    batch = data.batch
    needed = ["advantages", "response_mask", "old_log_probs", *(KIND_KEYS[k] for k in kinds)]
    if spec.sequence_advantage == "conspo":
        needed.append("rm_scores")
    for key in needed:
        if key not in batch.keys():  # noqa: SIM118 (TensorDict)
            raise KeyError(f"apply_token_credit needs data.batch[{key!r}] for method {cepo.method!r}")
    mask = batch["response_mask"]
    logp_student = batch["old_log_probs"].float()
    options = cepo.credit_options(progress)
    if spec.sequence_advantage == "conspo":
        rewards = (batch["rm_scores"].float() * mask).sum(-1)
        groups = [str(u) for u in np.asarray(data.non_tensor_batch["uid"]).tolist()]
        seq_adv = sequence_advantages(cepo.method, rewards, groups, scores=rollout_scores(logp_student, mask),
                                      options=options)
    else:
        seq_adv = row_advantages(batch["advantages"].float(), mask)

    def flag(key: str) -> torch.Tensor | None:
        if key not in data.non_tensor_batch:
            return None
        return torch.as_tensor(np.asarray(data.non_tensor_batch[key], dtype=bool))

    inputs = CreditInputs(
        advantages=seq_adv,
        response_mask=mask,
        lam=lam,
        eps_w=cepo.eps_w,
        logp_student=logp_student,
        logp_pos=batch[POS_KEY].float() if "pos" in kinds else None,
        logp_neg=batch[NEG_KEY].float() if "neg" in kinds else None,
        logp_demo=batch[DEMO_KEY].float() if "demo" in kinds else None,
        has_negative=flag(HAS_NEG_KEY) if "neg" in kinds else None,
        has_teacher=flag(HAS_TEACHER_KEY),
        num_tokens=int(mask.sum()),
        options=options,
        distill_mode=cepo.distill.mode,
    )
    if "neg" in kinds and inputs.has_negative is None:
        raise KeyError(f"apply_token_credit needs data.non_tensor_batch[{HAS_NEG_KEY!r}] for method {cepo.method!r}")
    token_adv, credit = compute_token_advantages(cepo.method, inputs)
    token_adv = token_adv.to(batch["advantages"].dtype)
    batch["advantages"] = token_adv
    batch["returns"] = token_adv.clone()
    metrics.update({f"cepo/{k}": float(v) for k, v in credit.items()})
    return logged_metrics(cepo.method, metrics)
