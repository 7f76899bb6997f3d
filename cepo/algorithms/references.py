"""Choice of the negative reference r- (paper Sec. 3.4, Algorithm 1 line 5)."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence

import torch


def select_negative_reference(
    scores: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    threshold: float = 0.5,
    eligible: Sequence[bool] | None = None,
) -> list[int | None]:
    """For every rollout, the row index of its group's lowest-score rejected rollout.

    Algorithm 1, line 5: ``r- = answer(argmin_{j in G-} R(y_j))`` with
    ``G- = {j : R(y_j) < threshold}``. Ties go to the lowest row index. A NaN score marks an
    unscorable rollout (every reward function returned ``None``): it is never chosen. A row whose group has
    no rejected rollout gets ``None`` (G- is empty: the caller falls back to P_T- := P_S,
    which is RLSD, Eq. 4).

    Args:
        scores: (B,) rewards.
        group_ids: B hashable group ids.
        threshold: a rollout with score strictly below it is rejected.
        eligible: optional per-row flags; rows with ``False`` are never chosen (used to skip
            rejected rollouts that have no extractable final answer, see
            ``cepo.rewards.extract_answer``).
    """
    values = [float(s) for s in (scores.tolist() if isinstance(scores, torch.Tensor) else scores)]
    if len(group_ids) != len(values):
        raise ValueError(f"group_ids has {len(group_ids)} entries but scores has {len(values)}")
    if eligible is not None and len(eligible) != len(values):
        raise ValueError(f"eligible has {len(eligible)} entries but scores has {len(values)}")
    best: dict[Hashable, int] = {}
    for row, (gid, value) in enumerate(zip(group_ids, values, strict=True)):
        if value != value or value >= threshold or (eligible is not None and not eligible[row]):  # NaN: unscorable
            continue
        current = best.get(gid)
        if current is None or value < values[current]:
            best[gid] = row
    return [best.get(gid) for gid in group_ids]


NEGATIVE_REFERENCES = ("paper", "own_answer", "most_frequent")
"""Which wrong answer a rollout's r- context carries (``cepo.negative_reference``):

* ``paper`` (default): the answer of the group's lowest-reward rejected rollout, the same for the whole group
  (Algorithm 1, line 5; ties go to the lowest row index);
* ``own_answer``: a rejected rollout with an answer contrasts with its *own* answer (so the wrong-answer teacher
  backs exactly the error it made: Proposition 1's condition for A < 0); other rollouts use the paper's r-;
* ``most_frequent``: the group's commonest wrong answer (ties: the paper's order, lowest reward then lowest row).
"""


def _has_text(answer: str | None) -> bool:
    return answer is not None and answer.strip() != ""


def negative_hints(
    answers: Sequence[str | None],
    scores: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    threshold: float = 0.5,
    require_answer: bool = True,
    reference: str = "paper",
) -> tuple[list[str | None], list[bool]]:
    """The r- hint text for every rollout and whether it has one.

    ``answers[j]`` is the extracted final answer of rollout ``j`` (``None`` when it has
    none). With ``require_answer`` (the default) rejected rollouts without an answer are
    skipped, so the hint is the answer of the lowest-score rejected rollout that *has* one;
    a group where no rejected rollout has an answer is treated as G- empty (RLSD fallback).
    With ``require_answer=False`` such a group gets hint ``""`` (the authors' code instead
    used the literal string "None"; we never do). ``reference`` chooses among the wrong answers
    (:data:`NEGATIVE_REFERENCES`); every choice leaves a group without a rejected rollout at G- empty.

    Returns:
        (hints, has_negative): ``hints[i]`` is ``None`` exactly when ``has_negative[i]`` is False.
    """
    if len(answers) != len(group_ids):
        raise ValueError(f"answers has {len(answers)} entries but group_ids has {len(group_ids)}")
    if reference not in NEGATIVE_REFERENCES:
        raise ValueError(f"negative reference must be one of {NEGATIVE_REFERENCES}, got {reference!r}")
    eligible = [_has_text(a) for a in answers] if require_answer else None
    chosen = select_negative_reference(scores, group_ids, threshold=threshold, eligible=eligible)
    hints: list[str | None] = []
    for index in chosen:
        if index is None:
            hints.append(None)
        else:
            answer = answers[index]
            hints.append(answer if answer is not None else "")
    if reference == "paper":
        return hints, [h is not None for h in hints]

    values = [float(v) for v in (scores.tolist() if isinstance(scores, torch.Tensor) else scores)]
    rejected = [v == v and v < threshold and _has_text(a) for v, a in zip(values, answers, strict=True)]
    if reference == "own_answer":
        hints = [answers[i] if rejected[i] else hints[i] for i in range(len(hints))]
    else:  # most_frequent
        wrong: dict[Hashable, list[int]] = {}
        for row, gid in enumerate(group_ids):
            if rejected[row]:
                wrong.setdefault(gid, []).append(row)
        best: dict[Hashable, str] = {}
        for gid, rows in wrong.items():
            texts = [answers[r] for r in rows]
            counts = {text: texts.count(text) for text in texts}
            rows = sorted(rows, key=lambda r: (-counts[answers[r]], values[r], r))
            best[gid] = str(answers[rows[0]])
        hints = [best.get(gid, hint) for gid, hint in zip(group_ids, hints, strict=True)]
    return hints, [h is not None for h in hints]


def demonstration_rows(
    scores: torch.Tensor | Sequence[float],
    group_ids: Sequence[Hashable],
    threshold: float = 0.5,
    exclude_self: bool = True,
) -> list[int | None]:
    """For every rollout, the row of the successful rollout of its group that SDPO shows the teacher.

    SDPO (baselines.md §4): the demonstration is the first rollout of the group (in batch order) whose
    reward is at least ``threshold``; with ``exclude_self`` (SDPO's ``dont_reprompt_on_self_success``) a
    successful rollout is shown another success, and gets ``None`` when it is the group's only one. NaN
    (unscorable) rollouts are never successes. ``None`` means no teacher row (no distillation signal).
    """
    values = [float(s) for s in (scores.tolist() if isinstance(scores, torch.Tensor) else scores)]
    if len(group_ids) != len(values):
        raise ValueError(f"group_ids has {len(group_ids)} entries but scores has {len(values)}")
    successes: dict[Hashable, list[int]] = {}
    for row, (gid, value) in enumerate(zip(group_ids, values, strict=True)):
        if value == value and value >= threshold:
            successes.setdefault(gid, []).append(row)
    chosen: list[int | None] = []
    for row, gid in enumerate(group_ids):
        candidates = [r for r in successes.get(gid, []) if not (exclude_self and r == row)]
        chosen.append(candidates[0] if candidates else None)
    return chosen


_THINK_BLOCK = re.compile(r"<think>.*?</think>", flags=re.DOTALL)


def strip_thinking(text: str) -> str:
    """A demonstration without its reasoning blocks: every ``<think>…</think>`` removed and then the surrounding
    whitespace stripped (SDPO shows the teacher the successful rollout's answer, not its thinking; ``baselines.md``
    §4a). A text without such a block is returned unchanged."""
    stripped, count = _THINK_BLOCK.subn("", text)
    return stripped.strip() if count else text
