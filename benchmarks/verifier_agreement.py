#!/usr/bin/env python
"""Agreement of the math verifiers with hand-checked labels (issue 18): mathruler, math-verify, and cepo's reward.

The set, ``benchmarks/data/math_answer_pairs.jsonl``: one (ground truth, response) pair per line with ``label`` =
whether a human grader accepts the response's final answer (the content of its last ``\\boxed{}``; a response
without one fails, as the prompt asks for the answer in a box), grouped by ``category``: integers, fractions
(``\\dfrac`` / ``\\frac`` / decimals / mixed numbers), radicals, intervals, units, equations (``x = 3`` vs ``3``),
degrees, percent, tuples, unordered answer lists and sets, expressions, text / multiple-choice answers, matrices,
decimals and answer extraction (several boxes, no box, an empty box).

Verifiers measured:
  mathruler          mathruler's grade_answer on the last boxed answer (cepo's reward before issue 18)
  math-verify        math_verify.verify(parse(gold), parse(response)) on the whole response (its own extraction)
  math-verify-boxed  math-verify on the last boxed answer
  cepo               cepo.rewards.compute_score accuracy: mathruler or math-verify on the last boxed answer

Writes ``benchmarks/results/verifier_agreement.json``: per verifier the agreement, false positives (accepted, label
wrong) and false negatives (rejected, label right) with their pair ids, per-category agreement and the wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PAIRS = HERE / "data" / "math_answer_pairs.jsonl"
RESULT = HERE / "results" / "verifier_agreement.json"


def load_pairs(path: Path = PAIRS) -> list[dict[str, Any]]:
    """The labelled pairs: ``id``, ``category``, ``ground_truth``, ``response``, ``label``."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _mathruler(ground_truth: str, response: str) -> bool:
    from mathruler.grader import grade_answer

    from cepo.rewards import extract_answer

    answer = extract_answer(response)
    return answer is not None and bool(grade_answer(answer, ground_truth))


def _math_verify(ground_truth: str, response: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse(f"\\boxed{{{ground_truth}}}"), parse(response)))


def _math_verify_boxed(ground_truth: str, response: str) -> bool:
    from cepo.rewards import extract_answer
    from cepo.rewards.math_verifier import _math_verify_equal

    answer = extract_answer(response)
    return answer is not None and _math_verify_equal(answer, ground_truth)


def _cepo(ground_truth: str, response: str) -> bool:
    from cepo.rewards import compute_score

    return compute_score(response, ground_truth).accuracy == 1.0


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "mathruler": _mathruler,
    "math-verify": _math_verify,
    "math-verify-boxed": _math_verify_boxed,
    "cepo": _cepo,
}


def measure(name: str, pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """One verifier's verdicts on ``pairs`` against their labels."""
    grade = VERIFIERS[name]
    tic = time.perf_counter()
    verdicts = [grade(p["ground_truth"], p["response"]) for p in pairs]
    wall = time.perf_counter() - tic
    categories: dict[str, list[int]] = {}
    for pair, verdict in zip(pairs, verdicts, strict=True):
        tally = categories.setdefault(pair["category"], [0, 0])
        tally[0] += verdict == pair["label"]
        tally[1] += 1
    return {
        "agree": sum(v == p["label"] for v, p in zip(verdicts, pairs, strict=True)),
        "pairs": len(pairs),
        "false_positives": [p["id"] for v, p in zip(verdicts, pairs, strict=True) if v and not p["label"]],
        "false_negatives": [p["id"] for v, p in zip(verdicts, pairs, strict=True) if not v and p["label"]],
        "per_category": {c: f"{a}/{n}" for c, (a, n) in sorted(categories.items())},
        "wall_seconds": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(RESULT))
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs every answer it cannot parse
    pairs = load_pairs()
    from importlib.metadata import version

    result = {
        "set": str(PAIRS.relative_to(HERE.parent)),
        "pairs": len(pairs),
        "positives": sum(p["label"] for p in pairs),
        "versions": {pkg: version(pkg) for pkg in ("mathruler", "math-verify", "sympy")},
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
        "verifiers": {name: measure(name, pairs) for name in VERIFIERS},
    }
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    by_id = {p["id"]: p for p in pairs}
    for name, row in result["verifiers"].items():
        print(f"{name:18s} {row['agree']:3d}/{row['pairs']}  FP {len(row['false_positives'])}  "
              f"FN {len(row['false_negatives'])}  {row['wall_seconds']:.2f} s")
        for pid in row["false_negatives"] + row["false_positives"]:
            print(f"    {pid:3d} {by_id[pid]['category']:10s} gt {by_id[pid]['ground_truth']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
