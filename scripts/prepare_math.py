#!/usr/bin/env python
"""Text math data -> verl parquet: DAPO-Math-17k for training, MATH-500 / AIME 2024 / AIME 2025 for evaluation.

Output (``--local-dir``, default ``$DATA_DIR`` or ``~/data/math``): ``train.parquet``, ``math500.parquet``,
``aime2024.parquet``, ``aime2025.parquet`` (the files configs/text/math_base.yaml reads), one row each:
  data_source   the source (hub name or local path)
  prompt        [{"role": "user", "content": "{problem} Solve the problem step by step, keeping reasoning brief.\\n
                Put ONLY the final answer inside \\boxed{}."}]  (the paper's Appendix B prompt, as for Geo3k)
  ability       "math"
  reward_model  {"style": "rule", "ground_truth": answer}
  extra_info    {"split", "index" (row in the source), "answer", "question"}

Training set: BytedTsinghua-SIA/DAPO-Math-17k (DAPO, Yu et al. 2025), not MATH's training split, because
  * every answer is an integer (DAPO rewrote the problems so): the training reward has no verifier false negatives
    from equivalent forms (fractions, radicals, intervals), which would otherwise be graded wrong and blamed token
    by token by CEPO's contrast;
  * its problems are competition level (AMC / AIME style), the difficulty of the AIME evaluation, so a 1.7B model
    gets mixed groups (correct and wrong rollouts) that CEPO's r+ / r- contrast needs; on MATH's training split most
    level 1-3 groups would be all-correct (zero advantage);
  * it is verl's DAPO recipe training set.
Its hub copy wraps each problem in DAPO's "Answer: $Answer" instruction and repeats the problems: the wrapper is
removed (the prompt asks for \\boxed{}, which our verifier reads) and repeated (problem, answer) rows are kept once.
MATH's training split (e.g. a local copy with ``problem`` and ``answer`` columns) works with ``--train-dataset``.

Evaluation sets: HuggingFaceH4/MATH-500 (split test), HuggingFaceH4/aime_2024 (split train, 30 problems),
yentinglin/aime_2025 (split train, 30 problems): the hub copies lighteval and open-r1 evaluate on.

Every source (``--train-dataset``, ``--math500``, ``--aime2024``, ``--aime2025``) is a hub name or a local file
(.parquet/.json/.jsonl/.arrow), a folder with ``<split>.parquet`` or a ``save_to_disk`` folder
(``cepo.data.prepare``): a local path that does not exist fails as such, and an unreachable hub fails saying so.
Columns: the problem is ``problem``, ``question`` or ``prompt`` (a string or a chat list; DAPO's wrapper is
removed), the answer is ``answer`` or ``reward_model.ground_truth``. Rows without a problem or an answer are named
with split and index, then skipped (``--on-bad-row skip``, default) or fail (``fail``); a row with several answers
always fails (exit 2). Nothing is written until every split converted.

Usage:
  python scripts/prepare_math.py --local-dir ~/data/math
  python scripts/prepare_math.py --local-dir /tmp/math --train-dataset /data/dapo.parquet --math500 /data/m500.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from cepo.cli import OneLineParser
from cepo.data import answer_text, student_prompt
from cepo.data.prepare import load_splits, rows_to_drop, write_splits
from cepo.output_paths import check_output_dir

PROG = "prepare_math"

SOURCES: dict[str, tuple[str, str, str]] = {
    "train": ("--train-dataset", "BytedTsinghua-SIA/DAPO-Math-17k", "train"),
    "math500": ("--math500", "HuggingFaceH4/MATH-500", "test"),
    "aime2024": ("--aime2024", "HuggingFaceH4/aime_2024", "train"),
    "aime2025": ("--aime2025", "yentinglin/aime_2025", "train"),
}
"""Output split -> (option, default hub name, the hub split read)."""

DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
"""DAPO-Math-17k's instruction around each problem (its ``prompt`` column)."""

PROBLEM_COLUMNS = ("problem", "question", "prompt")
ANSWER_COLUMNS = ("answer", "reward_model")


def problem_text(value: Any) -> str | None:
    """The bare problem of a row's problem cell: a string, or a chat list whose last user turn holds it; DAPO's
    instruction wrapper is removed. ``None`` when there is no problem text."""
    if isinstance(value, list | tuple) or (hasattr(value, "tolist") and getattr(value, "ndim", 0) >= 1):
        turns = [t for t in list(value) if isinstance(t, dict) and t.get("role", "user") == "user"]
        value = turns[-1].get("content") if turns else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith(DAPO_PREFIX.strip()):
        text = text[len(DAPO_PREFIX.strip()):].split(DAPO_SUFFIX.strip(), 1)[0]
    text = text.strip()
    return text or None


def _column(columns: list[str], candidates: tuple[str, ...], what: str, split: str, option: str, source: str) -> str:
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"{option} split {split!r} has no {what} column ({' or '.join(candidates)}; columns: {columns}) "
                     f"in {source!r}; rename the column that holds the {what} to {candidates[0]}")


def _answer_cell(row: dict[str, Any], column: str) -> Any:
    value = row[column]
    if column == "reward_model":
        return value.get("ground_truth") if isinstance(value, dict) else None
    return value


def to_verl(dataset: Any, split: str, data_source: str, option: str, on_bad_row: str = "skip",
            deduplicate: bool = False) -> Any:
    """Convert one split to verl's layout; bad rows reported (stderr) and skipped or raised
    (:func:`cepo.data.prepare.rows_to_drop`); with ``deduplicate`` a repeated (problem, answer) row is kept once."""
    columns = list(dataset.column_names)
    problem_col = _column(columns, PROBLEM_COLUMNS, "problem", split, option, data_source)
    answer_col = _column(columns, ANSWER_COLUMNS, "answer", split, option, data_source)
    problems = [problem_text(v) for v in dataset[problem_col]]
    answers = [_answer_cell({answer_col: v}, answer_col) for v in dataset[answer_col]]
    no_problem = {i: f"no problem text in {problem_col!r}" for i, p in enumerate(problems) if p is None}
    drop = rows_to_drop(answers, split, PROG, on_bad_row, no_problem)
    keep: list[int] = []
    seen: set[tuple[str, str]] = set()
    for i in range(len(problems)):
        if i in drop:
            continue
        key = (str(problems[i]), answer_text(answers[i]))
        if deduplicate and key in seen:
            continue
        seen.add(key)
        keep.append(i)
    if not keep:
        raise ValueError(f"{option} split {split!r}: no row is left after skipping the rows above")
    repeated = len(problems) - len(drop) - len(keep)
    if repeated:
        print(f"[{PROG}] split {split!r}: {repeated} repeated (problem, answer) rows kept once", file=sys.stderr)
    import datasets

    rows = []
    for i in keep:
        answer = answer_text(answers[i])
        rows.append({
            "data_source": data_source,
            "prompt": [{"role": "user", "content": student_prompt(str(problems[i]))}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"split": split, "index": i, "answer": answer, "question": problems[i]},
        })
    return datasets.Dataset.from_list(rows)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           error_prefix=f"[{PROG}]")
    parser.add_argument("--local-dir", default=os.environ.get("DATA_DIR", "~/data/math"),
                        help="output directory for <split>.parquet (default $DATA_DIR or ~/data/math)")
    for split, (option, hub, hub_split) in SOURCES.items():
        parser.add_argument(option, default=hub, help=f"{split} source: hub name (default {hub}, split "
                                                      f"{hub_split}) or a local file / folder")
    parser.add_argument("--splits", nargs="+", choices=list(SOURCES), default=list(SOURCES),
                        help="which outputs to write (default all)")
    parser.add_argument("--on-bad-row", choices=["skip", "fail"], default="skip",
                        help="rows without a problem or an answer: report and skip (default) or fail")
    parser.add_argument("--keep-duplicates", action="store_true",
                        help="keep repeated (problem, answer) rows of the training set (default: once each)")
    args = parser.parse_args(argv)
    try:
        out = check_output_dir(args.local_dir, "--local-dir")  # before the downloads and the conversion
        converted = {}
        for split in args.splits:
            option, _, hub_split = SOURCES[split]
            source = getattr(args, option.lstrip("-").replace("-", "_"))
            dataset = load_splits(source, [hub_split], option)[hub_split]
            converted[split] = to_verl(dataset, split, source, option, args.on_bad_row,
                                       deduplicate=split == "train" and not args.keep_duplicates)
        write_splits(converted, out, PROG)
    except (FileNotFoundError, ValueError) as err:
        print(f"[{PROG}] error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"[{PROG}] interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
