"""The Geo3k / math verifier: boxed-answer accuracy plus a format score.

Follows EasyR1's ``math`` reward used by the paper's authors: ``overall =
accuracy_weight * accuracy + format_weight * format`` with format = 1 when the response contains a
``\\boxed{...}``. Defaults 0.9 / 0.1. Accuracy grades the last ``\\boxed{...}`` of the response against the
ground truth with two verifiers, either of which may accept it (:func:`answers_match`):

* mathruler (the authors' grader: normalised string match or sympy equality), and
* math-verify (Hugging Face's verifier, as in open-r1 / lighteval), on the same boxed answer.

Measured on 138 hand-labelled (ground truth, response) pairs (``benchmarks/data/math_answer_pairs.jsonl``,
``benchmarks/verifier_agreement.py``): mathruler alone misses powers, unordered answer lists, sets, equations and
unnormalised fractions; math-verify alone misses percentages and trailing periods; neither accepted a wrong
answer, and the combination agrees with the labels on 135 of 138.
"""

from __future__ import annotations

import math
import re
import threading
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


MATH_VERIFY_TIMEOUT_S = 5
"""math-verify's own limit per parse / comparison (its default). Its timer is ``signal.alarm``, which works in the
main thread only: elsewhere (a reward thread pool) the limit is off, since with it math-verify would log an error and
return "not equal" for every answer."""


def _math_verify_equal(answer: str, ground_truth: str) -> bool:
    """math-verify's verdict on two answers, each parsed as the content of a ``\\boxed{}``."""
    from math_verify import parse, verify

    limit = MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    gold = parse(f"\\boxed{{{ground_truth}}}", parsing_timeout=limit)
    predicted = parse(f"\\boxed{{{answer}}}", parsing_timeout=limit)
    return bool(gold and predicted and verify(gold, predicted, timeout_seconds=limit))


def answers_match(answer: str, ground_truth: str) -> bool:
    """Whether a final answer equals the ground truth: mathruler's ``grade_answer`` or math-verify accepts it.

    Args:
        answer: the content of the response's last ``\\boxed{}`` (:func:`extract_answer`).
        ground_truth: the dataset's answer.
    """
    return bool(grade_answer(answer, ground_truth)) or _math_verify_equal(answer, ground_truth)


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
    (:func:`answers_match`: mathruler or math-verify), ``format`` is 1.0 when the response contains a ``\\boxed{...}``.
    """
    _check_weights(accuracy_weight, format_weight)
    if ground_truth is None or str(ground_truth).strip() == "":
        raise ValueError("ground_truth is empty: every dataset row needs a non-empty answer")
    text = _normalize_response(response)
    format_score = 1.0 if _BOXED.search(text) else 0.0
    answer = extract_answer(text)
    accuracy = 1.0 if answer is not None and answers_match(answer, str(ground_truth)) else 0.0
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
