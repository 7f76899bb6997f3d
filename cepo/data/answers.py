"""The ground-truth answer of a training row, as the one string the verifier compares against.

One rule for every place that reads answers (``cepo train``'s loader, ``scripts/prepare_geo3k.py``,
``cepo.data.to_conversational``):

* a string is stripped; a number is written with ``str`` (``24`` -> ``"24"``);
* a list (or tuple / array) with exactly one element is that element (``["24"]`` -> ``"24"``);
* a missing (``None``), blank or empty-list answer is *missing*;
* a list with several elements (``["24", "x"]``) is refused: the verifier grades a rollout against one
  answer, and the list's ``str`` (``"['24', 'x']"``) would never match anything;
* anything else (a dict, ...) is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["AnswerError", "answer_problems", "answer_text", "describe_answer_problems"]


class AnswerError(ValueError):
    """An answer that cannot be used as the ground truth; the message says why.

    ``missing`` is true for an absent answer (``None``, blank, empty list) and false for one that is present but
    unusable (several answers, a dict): tools may skip missing answers, but never guess among several.
    """

    def __init__(self, reason: str, missing: bool = False) -> None:
        super().__init__(reason)
        self.missing = missing


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list | tuple):
        return list(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays (pandas reads parquet lists as arrays)
    if callable(tolist) and getattr(value, "ndim", 0) >= 1:
        return list(tolist())
    return None


def answer_text(value: Any) -> str:
    """The ground-truth string of one answer (rules in the module docstring); ``AnswerError`` if unusable."""
    items = _as_list(value)
    if items is not None:
        if len(items) == 1:
            return answer_text(items[0])
        if not items:
            raise AnswerError("no answer (empty list)", missing=True)
        raise AnswerError(f"{len(items)} answers {items!r} (the verifier compares against one; keep one per row)")
    if value is None:
        raise AnswerError("no answer", missing=True)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise AnswerError(f"answer of type {type(value).__name__} ({value!r}); expected a string")
    text = str(value).strip()
    if not text:
        raise AnswerError("no answer (blank)", missing=True)
    return text


def answer_problems(answers: Iterable[Any]) -> dict[int, AnswerError]:
    """``{row index: AnswerError}`` for every answer that :func:`answer_text` refuses (empty when all are usable)."""
    problems: dict[int, AnswerError] = {}
    for i, value in enumerate(answers):
        try:
            answer_text(value)
        except AnswerError as err:
            problems[i] = err
    return problems


def describe_answer_problems(problems: dict[int, AnswerError], limit: int = 3) -> str:
    """``"row 2: no answer; row 5: 2 answers [...]"`` for the first ``limit`` problems (and how many more)."""
    items = sorted(problems.items())
    text = "; ".join(f"row {row}: {err}" for row, err in items[:limit])
    return text + (f"; and {len(items) - limit} more" if len(items) > limit else "")
