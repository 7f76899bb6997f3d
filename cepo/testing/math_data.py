"""Offline text-math fixtures shaped like the hub sets ``scripts/prepare_math.py`` reads.

* :func:`make_math_problems`: small arithmetic word problems with integer answers (what a tiny model can learn).
* :func:`write_math_sources`: local files with the layouts of the real sources:
  ``dapo.parquet`` (BytedTsinghua-SIA/DAPO-Math-17k: ``data_source``, ``prompt`` = one user turn with DAPO's
  "Answer: $Answer" wrapper, ``ability``, ``reward_model`` = {ground_truth, style}, ``extra_info`` = {index}; every
  problem repeated, as in the hub copy), ``math500.jsonl`` (HuggingFaceH4/MATH-500: ``problem``, ``solution``,
  ``answer``, ``subject``, ``level``, ``unique_id``), ``aime2024.parquet`` (HuggingFaceH4/aime_2024: ``id``,
  ``problem``, ``solution``, ``answer`` as a string, ``url``, ``year``) and ``aime2025.parquet``
  (yentinglin/aime_2025: ``id``, ``problem``, ``answer`` as an integer, ``url``, ``year``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["MathProblem", "make_math_like", "make_math_problems", "write_math_sources"]

_DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
_DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


@dataclass(frozen=True)
class MathProblem:
    """One problem and its integer answer (as a string)."""

    problem: str
    answer: str


def make_math_problems(n: int = 16, seed: int = 0) -> list[MathProblem]:
    """``n`` distinct problems ``What is a + b?`` / ``What is a times b?`` with small integers, deterministic in
    ``seed``."""
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[MathProblem] = []
    while len(problems) < n:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if rng.random() < 0.5:
            item = MathProblem(f"What is ${a} + {b}$?", str(a + b))
        else:
            item = MathProblem(f"What is ${a} \\times {b}$?", str(a * b))
        if item.problem not in seen:
            seen.add(item.problem)
            problems.append(item)
    return problems


def write_math_sources(out_dir: str | Path, n_train: int = 8, n_eval: int = 4, repeats: int = 3,
                       seed: int = 0) -> dict[str, Path]:
    """Write the four source files (module docstring) into ``out_dir``; returns ``{output split: file}`` with the
    keys of ``scripts/prepare_math.py``'s splits. The training file repeats each problem ``repeats`` times."""
    import datasets

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = make_math_problems(n_train, seed)
    dapo = [
        {"data_source": "math_dapo",
         "prompt": [{"content": _DAPO_PREFIX + p.problem + _DAPO_SUFFIX, "role": "user"}],
         "ability": "MATH",
         "reward_model": {"ground_truth": p.answer, "style": "rule-lighteval/MATH_v2"},
         "extra_info": {"index": f"id-{i}"}}
        for _ in range(repeats) for i, p in enumerate(train)
    ]
    datasets.Dataset.from_list(dapo).to_parquet(str(out / "dapo.parquet"))
    evals = make_math_problems(n_train + 3 * n_eval, seed + 1)[n_train:]
    math500, aime24, aime25 = evals[:n_eval], evals[n_eval:2 * n_eval], evals[2 * n_eval:]
    with open(out / "math500.jsonl", "w") as f:
        for i, p in enumerate(math500):
            f.write(json.dumps({"problem": p.problem, "solution": f"So the answer is $\\boxed{{{p.answer}}}$.",
                                "answer": p.answer, "subject": "Prealgebra", "level": 1,
                                "unique_id": f"test/prealgebra/{i}.json"}) + "\n")
    datasets.Dataset.from_list([
        {"id": 60 + i, "problem": p.problem, "solution": "...", "answer": p.answer,
         "url": "https://artofproblemsolving.com/wiki", "year": "2024"} for i, p in enumerate(aime24)
    ]).to_parquet(str(out / "aime2024.parquet"))
    datasets.Dataset.from_list([
        {"id": str(i), "problem": p.problem, "answer": int(p.answer), "url": "https://artofproblemsolving.com/wiki",
         "year": 2025} for i, p in enumerate(aime25)
    ]).to_parquet(str(out / "aime2025.parquet"))
    return {"train": out / "dapo.parquet", "math500": out / "math500.jsonl", "aime2024": out / "aime2024.parquet",
            "aime2025": out / "aime2025.parquet"}


def make_math_like(n: int = 16, seed: int = 0) -> Any:
    """:func:`make_math_problems` in TRL's conversational layout (``prompt`` = one user turn with the paper's student
    prompt, ``answer``): the text counterpart of ``cepo.data.to_conversational(make_geo3k_like(n))``."""
    import datasets

    from cepo.data import student_prompt

    problems = make_math_problems(n, seed)
    return datasets.Dataset.from_dict({
        "prompt": [[{"role": "user", "content": student_prompt(p.problem)}] for p in problems],
        "answer": [p.answer for p in problems],
    })
