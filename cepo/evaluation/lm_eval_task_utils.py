"""Prompt and scoring of cepo's lm-evaluation-harness tasks (``cepo eval --benchmarks math500,aime24,aime25``).

This file runs inside lm-eval's own virtualenv, not cepo's: ``cepo.evaluation.lm_eval.write_task_dir`` copies it
next to the generated task YAMLs as ``utils.py`` (their ``!function utils.*`` entries) and fills in
``PROMPT_SUFFIX``. It imports nothing from cepo, only ``math_verify`` (installed by ``lm-eval[math]``).

* ``doc_to_text``: the student prompt of training (``cepo.data.student_prompt``: the problem, then the paper's
  Appendix B instruction asking for the final answer in ``\\boxed{}``); lm-eval applies the chat template
  (``--apply_chat_template``).
* ``process_results``: every one of the k responses of a problem (the task's ``repeats``, kept by its
  ``take_first_k`` filter) is graded on its last ``\\boxed{...}`` with math-verify, both sides parsed as boxed
  answers (as ``cepo.rewards``' math-verify half does); returns ``avg_at_k`` (the fraction of the k responses that
  are right) and ``pass_at_k`` (1 when any is). lm-eval's ``mean`` aggregation then gives avg@k over problems and
  its standard error, the sample standard deviation of the per-problem fractions over sqrt(n).
"""

from __future__ import annotations

from typing import Any

PROMPT_SUFFIX: str | None = None  # filled in by cepo.evaluation.lm_eval.write_task_dir
MATH_VERIFY_TIMEOUT_S = 5


def _field(doc: dict[str, Any], name: str) -> Any:
    """``doc[name]`` in any capitalisation (MATH-500 and the AIME copies spell ``problem`` / ``Problem``)."""
    for key, value in doc.items():
        if key.lower() == name:
            return value
    raise KeyError(f"the document has no {name!r} field (fields: {sorted(doc)})")


def doc_to_text(doc: dict[str, Any]) -> str:
    """The user turn: the problem and the training instruction (``cepo.data.student_prompt``)."""
    if PROMPT_SUFFIX is None:
        raise RuntimeError("PROMPT_SUFFIX is unset: write the task folder with cepo.evaluation.lm_eval")
    return str(_field(doc, "problem")).replace("<image>", "").strip() + PROMPT_SUFFIX


def doc_to_target(doc: dict[str, Any]) -> str:
    """The ground-truth answer as text (AIME answers are integers in some copies)."""
    return str(_field(doc, "answer")).strip()


def last_boxed(response: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (balanced braces), or ``None`` when there is none."""
    start = response.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(response)):
        if response[j] == "{":
            depth += 1
        elif response[j] == "}":
            depth -= 1
            if depth == 0:
                content = response[i:j].strip()
                return content or None
    return None


def is_correct(response: str, answer: str) -> bool:
    """Whether the response's last boxed answer equals ``answer`` for math-verify."""
    from math_verify import parse, verify

    boxed = last_boxed(response)
    if boxed is None:
        return False
    gold = parse(f"\\boxed{{{answer}}}", parsing_timeout=MATH_VERIFY_TIMEOUT_S)
    predicted = parse(f"\\boxed{{{boxed}}}", parsing_timeout=MATH_VERIFY_TIMEOUT_S)
    return bool(gold and predicted and verify(gold, predicted, timeout_seconds=MATH_VERIFY_TIMEOUT_S))


def _responses(results: list[Any]) -> list[str]:
    """The k responses of one problem: lm-eval passes ``[[r1, ..., rk]]`` after ``take_first_k`` (``[r]`` after
    ``take_first``)."""
    out: list[str] = []
    for item in results:
        out.extend(item if isinstance(item, list | tuple) else [item])
    return [str(r) for r in out]


def process_results(doc: dict[str, Any], results: list[Any]) -> dict[str, float]:
    """``avg_at_k`` (fraction of the k responses graded right) and ``pass_at_k`` for one problem."""
    responses = _responses(results)
    if not responses:
        raise ValueError("no responses for this problem")
    answer = doc_to_target(doc)
    correct = [is_correct(r, answer) for r in responses]
    return {"avg_at_k": sum(correct) / len(correct), "pass_at_k": float(any(correct))}
