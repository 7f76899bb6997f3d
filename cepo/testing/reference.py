"""Independent float64 references of the credit formulas, for the tests to compare the engines' advantages against.

Each function is the paper's formula written out as a plain Python loop over rows and tokens, in float64 Python
numbers; nothing here imports :mod:`cepo.algorithms` (so a defect there cannot cancel out of a comparison).
Tensors come in as (B,) / (B, T) and go out as float64 tensors of the same shape.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

__all__ = [
    "conspo_sequence_advantages",
    "conspo_token_advantages",
    "distillation_advantages",
    "grpo_advantages",
    "mean_logprob_scores",
    "modulated_advantages",
]


def _rows(x: torch.Tensor | Sequence[float]) -> list:
    return x.detach().double().tolist() if isinstance(x, torch.Tensor) else [float(v) for v in x]


def grpo_advantages(rewards: torch.Tensor | Sequence[float], groups: Sequence[Hashable],
                    eps: float = 1e-6, norm_by_std: bool = True) -> torch.Tensor:
    """Eq. 1: ``(R_i - mean_G R) / (std_G R + eps)`` with the unbiased std; a one-rollout group: mean 0, std 1.

    Returns (B,) float64.
    """
    r = _rows(rewards)
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    out = [0.0] * len(r)
    for rows in members.values():
        n = len(rows)
        mean = sum(r[i] for i in rows) / n if n > 1 else 0.0
        std = math.sqrt(sum((r[i] - mean) ** 2 for i in rows) / (n - 1)) if n > 1 else 1.0
        for i in rows:
            out[i] = (r[i] - mean) / (std + eps) if norm_by_std else r[i] - mean
    return torch.tensor(out, dtype=torch.float64)


def modulated_advantages(adv: torch.Tensor | Sequence[float], mask: torch.Tensor, lam: float, eps_w: float,
                         logp_student: torch.Tensor, logp_pos: torch.Tensor, logp_neg: torch.Tensor | None = None,
                         has_negative: Sequence[bool] | torch.Tensor | None = None) -> torch.Tensor:
    """RLSD (Eq. 4) / CEPO (Eqs. 5 + 7), token by token: ``D = log P_T+ - log P_ref`` with ``P_ref = P_T-`` on rows
    whose group has an r- (CEPO) and ``P_S`` otherwise (RLSD); ``w = exp(sign(A) D)``;
    ``A_t = A ((1 - lam) + lam min(max(w, 1 - eps_w), 1 + eps_w))`` on response tokens, 0 elsewhere.

    ``logp_neg=None`` is RLSD on every row. Returns (B, T) float64.
    """
    a, m, s, p = _rows(adv), _rows(mask), _rows(logp_student), _rows(logp_pos)
    n = _rows(logp_neg) if logp_neg is not None else None
    neg_rows = [bool(h) for h in (has_negative if has_negative is not None else [False] * len(a))]
    out = [[0.0] * len(row) for row in m]
    for i, row in enumerate(m):
        sign = (a[i] > 0) - (a[i] < 0)
        for t, on in enumerate(row):
            if not on:
                continue
            reference = n[i][t] if (n is not None and neg_rows[i]) else s[i][t]
            w = math.exp(sign * (p[i][t] - reference))
            out[i][t] = a[i] * ((1.0 - lam) + lam * min(max(w, 1.0 - eps_w), 1.0 + eps_w))
    return torch.tensor(out, dtype=torch.float64)


def distillation_advantages(logp_teacher: torch.Tensor, logp_student: torch.Tensor, mask: torch.Tensor,
                            has_teacher: Sequence[bool] | torch.Tensor) -> torch.Tensor:
    """OPSD / SDPO sampled-token mode with weight 1: ``A_t = log P_T(y_t) - log P_S(y_t)`` on the response tokens of
    rows with a teacher, 0 elsewhere (the policy-gradient form of the sampled reverse KL). Returns (B, T) float64."""
    teacher, student, m = _rows(logp_teacher), _rows(logp_student), _rows(mask)
    rows = [bool(h) for h in has_teacher]
    return torch.tensor([[teacher[i][t] - student[i][t] if (on and rows[i]) else 0.0 for t, on in enumerate(row)]
                         for i, row in enumerate(m)], dtype=torch.float64)


def mean_logprob_scores(logp: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """ConSPO's score of each rollout: the mean of its response tokens' log-probs."""
    lp, m = _rows(logp), _rows(mask)
    return [sum(v for v, on in zip(lp[i], row, strict=True) if on) / sum(1 for on in row if on)
            for i, row in enumerate(m)]


def conspo_sequence_advantages(scores: Sequence[float], rewards: torch.Tensor | Sequence[float],
                               groups: Sequence[Hashable], tau: float, margin: float,
                               threshold: float = 0.5) -> torch.Tensor:
    """``-dL/ds_i`` of ConSPO's loss (Eq. 13), by autograd of the loss written out term by term in float64:
    ``L = -mean_q (tau / N+) sum_i log[e^{(s_i - m)/tau} / (e^{(s_i - m)/tau} + sum_j e^{s_j/tau})]`` over the groups
    with a positive (reward >= threshold) and a negative. Returns (B,) float64."""
    r = _rows(rewards)
    s = torch.tensor([float(v) for v in scores], dtype=torch.float64, requires_grad=True)
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    objectives = []
    for rows in members.values():
        pos = [i for i in rows if r[i] >= threshold]
        neg = [i for i in rows if r[i] < threshold]
        if not pos or not neg:
            continue
        negatives = sum(torch.exp(s[j] / tau) for j in neg)
        terms = [torch.log(torch.exp((s[i] - margin) / tau) / (torch.exp((s[i] - margin) / tau) + negatives))
                 for i in pos]
        objectives.append(tau * sum(terms) / len(pos))
    if not objectives:
        return torch.zeros(len(r), dtype=torch.float64)
    loss = -sum(objectives) / len(objectives)
    (grad,) = torch.autograd.grad(loss, s)
    return -grad


def conspo_token_advantages(seq_adv: torch.Tensor | Sequence[float], mask: torch.Tensor,
                            num_tokens: int | None = None) -> torch.Tensor:
    """ConSPO's sequence advantage spread over each response: ``A_i N / |o_i|`` on its tokens (N = ``num_tokens``,
    the batch's response tokens by default), so that a token-mean loss over N tokens sums ``A_i`` times each row's
    mean log-prob. Returns (B, T) float64."""
    a, m = _rows(seq_adv), _rows(mask)
    total = num_tokens if num_tokens is not None else sum(sum(1 for on in row if on) for row in m)
    out = []
    for i, row in enumerate(m):
        length = sum(1 for on in row if on)
        out.append([a[i] * total / length if on else 0.0 for on in row])
    return torch.tensor(out, dtype=torch.float64)
