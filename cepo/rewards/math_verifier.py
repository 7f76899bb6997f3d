"""The Geo3k / math verifier: boxed-answer accuracy plus a format score.

Follows EasyR1's ``math`` reward used by the paper's authors: ``overall =
accuracy_weight * accuracy + format_weight * format`` with accuracy graded by mathruler
(normalised string match or sympy equality) on the last ``\\boxed{...}`` of the response,
and format = 1 when the response contains a ``\\boxed{...}``. Defaults 0.9 / 0.1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from mathruler.grader import extract_boxed_content, grade_answer

_BOXED = re.compile(r"\\boxed\{.*\}", re.DOTALL)
_LITERAL_NONE = re.compile(r"\\boxed\{\s*None\s*\}")
_TAG_SPACES = re.compile(r"\s*(<|>|/)\s*")


def _normalize_response(response: str) -> str:
    """Strip whitespace around ``<``, ``>`` and ``/`` (as EasyR1's reward does)."""
    return _TAG_SPACES.sub(r"\1", response)


def extract_answer(response: str) -> str | None:
    """The final answer of a response: the content of its last ``\\boxed{...}``.

    Returns ``None`` when the response has no complete ``\\boxed{...}`` or the box is empty.
    mathruler's ``extract_boxed_content`` returns the *string* ``"None"`` in that case; the
    authors' code then used ``" None"`` as the wrong-answer hint r-. We never turn a missing
    answer into a hint: callers treat ``None`` as "this rollout has no answer" (see
    ``cepo.algorithms.negative_hints``, which then picks the next-lowest rejected rollout
    with an answer, or falls back to RLSD for the group).
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    content = extract_boxed_content(response)
    if content == "None" and not _LITERAL_NONE.search(response):
        return None
    content = content.strip()
    return content or None


@dataclass(frozen=True)
class MathScore:
    """Reward components of one response."""

    overall: float
    accuracy: float
    format: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _check_weights(accuracy_weight: float, format_weight: float) -> None:
    for name, value in (("accuracy_weight", accuracy_weight), ("format_weight", format_weight)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if accuracy_weight + format_weight == 0:
        raise ValueError("accuracy_weight and format_weight are both 0: every reward would be 0")


def compute_score(
    response: str,
    ground_truth: str,
    accuracy_weight: float = 0.9,
    format_weight: float = 0.1,
) -> MathScore:
    """Score one response against its ground-truth answer.

    ``accuracy`` is 1.0 when the last boxed answer grades equal to ``ground_truth``
    (mathruler), ``format`` is 1.0 when the response contains a ``\\boxed{...}``.
    """
    _check_weights(accuracy_weight, format_weight)
    if ground_truth is None or str(ground_truth).strip() == "":
        raise ValueError("ground_truth is empty: every dataset row needs a non-empty answer")
    text = _normalize_response(response)
    format_score = 1.0 if _BOXED.search(text) else 0.0
    answer = extract_answer(text)
    accuracy = 1.0 if answer is not None and grade_answer(answer, str(ground_truth)) else 0.0
    overall = accuracy_weight * accuracy + format_weight * format_score
    return MathScore(overall=overall, accuracy=accuracy, format=format_score)


def compute_scores(
    responses: Sequence[str],
    ground_truths: Sequence[str],
    accuracy_weight: float = 0.9,
    format_weight: float = 0.1,
) -> list[MathScore]:
    """Score a batch; ``responses`` and ``ground_truths`` are aligned row by row."""
    if len(responses) != len(ground_truths):
        raise ValueError(
            f"responses has {len(responses)} entries but ground_truths has {len(ground_truths)}; align them row by row"
        )
    return [compute_score(r, g, accuracy_weight, format_weight) for r, g in zip(responses, ground_truths, strict=True)]
