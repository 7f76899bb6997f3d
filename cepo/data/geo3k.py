"""Geo3k (``hiyouga/geometry3k``) rows -> the paper's student prompt (Appendix B).

A Geo3k row has ``images`` (a list with one figure), ``problem`` (starting with
``<image>``) and ``answer``. The student sees the problem followed by the Appendix B
instruction; the image goes first in the user turn.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cepo.data.answers import answer_problems, answer_text, describe_answer_problems

STUDENT_PROMPT_SUFFIX = (
    " Solve the problem step by step, keeping reasoning brief.\nPut ONLY the final answer inside \\boxed{}."
)
"""Appendix B: ``{{problem}} Solve the problem step by step, keeping reasoning brief. Put ONLY the final
answer inside \\boxed{}.`` (EasyR1's ``math_short`` format prompt)."""

IMAGE_PLACEHOLDER = "<image>"


def student_prompt(problem: str) -> str:
    """The student's user text for one problem (the ``<image>`` placeholder removed)."""
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("problem must be a non-empty string")
    return problem.replace(IMAGE_PLACEHOLDER, "").strip() + STUDENT_PROMPT_SUFFIX


def missing_answers(answers: Iterable[Any]) -> list[int]:
    """Indices of the answers that are missing (``None``, blank, an empty list); see ``cepo.data.answers``."""
    return [i for i, err in answer_problems(answers).items() if err.missing]


def to_conversational(dataset: Any, problem_key: str = "problem", answer_key: str = "answer") -> Any:
    """Map a Geo3k-shaped ``datasets.Dataset`` to TRL's conversational layout.

    Output columns: ``prompt`` (one user message with the student prompt), ``images`` (kept),
    ``answer`` (``cepo.data.answers.answer_text``: a one-element list becomes its element). Rows without
    an answer, or with several, raise ``ValueError`` naming the row index (the trainer grades every
    rollout against one answer, so a missing answer would silently zero the reward).
    """
    columns = set(dataset.column_names)
    for key in (problem_key, answer_key):
        if key not in columns:
            raise ValueError(
                f"dataset has no {key!r} column (columns: {sorted(columns)}); "
                f"pass --{key.replace('_', '-')}-key or rename the column"
            )
    problems = answer_problems(dataset[answer_key])
    missing = [i for i, err in problems.items() if err.missing]
    if missing:
        raise ValueError(
            f"dataset rows {missing[:10]}{'...' if len(missing) > 10 else ''} have no {answer_key!r}; "
            "drop them (dataset.filter) or fix the data: every row needs a verifiable answer"
        )
    if problems:
        raise ValueError(
            f"dataset {answer_key!r} unusable: {describe_answer_problems(problems)}; every row needs one answer"
        )

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "prompt": [{"role": "user", "content": student_prompt(row[problem_key])}],
            "answer": answer_text(row[answer_key]),
        }

    drop = [c for c in dataset.column_names if c not in ("images", "image", answer_key)]
    out = dataset.map(convert, remove_columns=drop)
    if answer_key != "answer":
        out = out.remove_columns(answer_key)
    return out
