#!/usr/bin/env python
"""Geometry3K (``hiyouga/geometry3k``) -> verl parquet with images and the paper's student prompt.

Each output row (verl's RL dataset layout):
  data_source   "hiyouga/geometry3k"
  prompt        [{"role": "user", "content": "<image>{problem} Solve the problem step by step, keeping reasoning
                brief.\\nPut ONLY the final answer inside \\boxed{}."}]  (Appendix B; cepo.data.student_prompt)
  images        the row's figures
  ability       "math"
  reward_model  {"style": "rule", "ground_truth": answer}
  extra_info    {"split", "index", "answer", "question"}

Source (``--dataset``): a Hugging Face hub name (default ``hiyouga/geometry3k``), a directory holding
``train.parquet``/``test.parquet`` (e.g. ``cepo.testing.write_geo3k_parquet`` output), a single
``.parquet`` / ``.json`` / ``.jsonl`` / ``.arrow`` file, or a ``datasets.save_to_disk`` directory. A source
that looks like a path (starts with ``/``, ``.`` or ``~``, has a file extension or several ``/``) and does
not exist fails as such; an ``owner/name`` that is not a local path is looked up on the hub, and an
unreachable hub (offline, ``HF_HUB_OFFLINE=1``) fails saying so.

Rows are checked before anything is written (``cepo.data``): rows without an answer are reported with their
split and index, then skipped (``--on-missing-answer skip``, default) or the script exits with status 2
(``fail``); a one-element list answer becomes its element, a row with several answers fails (status 2);
rows whose image cannot be opened (corrupt bytes, a missing file) are reported with split, index and
column, then skipped (``--on-bad-image skip``, default) or fail (``fail``). Output files are written only
when every split converted: each to a temporary file in ``--local-dir``, then renamed into place, so a
failed run leaves no partial ``<split>.parquet`` (and creates no empty directory).

Usage:
  python scripts/prepare_geo3k.py --local-dir ~/data/geo3k
  python scripts/prepare_geo3k.py --dataset /path/to/parquet_dir --local-dir /tmp/geo3k --on-missing-answer fail
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import datasets

from cepo.cli import OneLineParser
from cepo.data import answer_problems, answer_text, describe_bad_images, image_problems, student_prompt
from cepo.data.answers import describe_answer_problems
from cepo.data.prepare import load_splits, write_splits
from cepo.output_paths import check_output_dir

DATA_SOURCE = "hiyouga/geometry3k"


class MissingAnswerError(ValueError):
    """Rows without an answer and ``--on-missing-answer fail``."""


class BadImageError(ValueError):
    """Rows whose image cannot be opened and ``--on-bad-image fail``."""


def to_verl(
    dataset: datasets.Dataset, split: str, on_missing_answer: str = "skip", on_bad_image: str = "skip"
) -> datasets.Dataset:
    """Convert one split; rows without an answer or with an unreadable image are reported (stderr) and
    skipped or raise; rows with several answers raise."""
    for key in ("problem", "answer", "images"):
        if key not in dataset.column_names:
            raise ValueError(f"split {split!r} has no {key!r} column (columns: {dataset.column_names})")
    problems = answer_problems(dataset["answer"])
    several = {i: err for i, err in problems.items() if not err.missing}
    if several:
        raise ValueError(f"split {split!r}: {describe_answer_problems(several)}")
    bad = sorted(problems)
    if bad:
        print(f"[prepare_geo3k] split {split!r}: rows without an answer: {bad}", file=sys.stderr)
        if on_missing_answer == "fail":
            raise MissingAnswerError(f"split {split!r}: rows {bad} have no answer (use --on-missing-answer skip)")
    images = image_problems(dataset, "images")
    bad_image_rows = sorted({b.row for b in images})
    if images:
        print(f"[prepare_geo3k] split {split!r}: rows whose image cannot be opened: {describe_bad_images(images)}",
              file=sys.stderr)
        if on_bad_image == "fail":
            raise BadImageError(
                f"split {split!r}: rows {bad_image_rows} have an image that cannot be opened "
                f"({describe_bad_images(images, limit=1)}); fix them or use --on-bad-image skip"
            )
    drop = set(bad) | set(bad_image_rows)
    keep = [i for i in range(len(dataset)) if i not in drop]
    dataset = dataset.add_column("_orig_index", list(range(len(dataset))))
    if drop:
        dataset = dataset.select(keep)
    if len(dataset) == 0:
        raise ValueError(f"split {split!r}: no row is left after skipping the rows above")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        answer = answer_text(row["answer"])
        return {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": "<image>" + student_prompt(row["problem"])}],
            "images": row["images"],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": answer},
            "extra_info": {"split": split, "index": int(row["_orig_index"]), "answer": answer,
                           "question": row["problem"]},
        }

    return dataset.map(convert, remove_columns=dataset.column_names, num_proc=1)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           error_prefix="[prepare_geo3k]")
    parser.add_argument("--dataset", default=DATA_SOURCE, help="hub name, parquet dir/file, or save_to_disk dir")
    parser.add_argument("--local-dir", default=os.environ.get("DATA_DIR", "~/data/geo3k"),
                        help="output directory for <split>.parquet (default $DATA_DIR or ~/data/geo3k)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--on-missing-answer", choices=["skip", "fail"], default="skip")
    parser.add_argument("--on-bad-image", choices=["skip", "fail"], default="skip",
                        help="rows whose image cannot be opened: report and skip (default) or fail")
    args = parser.parse_args(argv)
    try:
        out = check_output_dir(args.local_dir, "--local-dir")  # before the download and the conversion
        converted = {
            split: to_verl(ds, split, args.on_missing_answer, args.on_bad_image)
            for split, ds in load_splits(args.dataset, args.splits, "--dataset").items()
        }
        write_splits(converted, out, "prepare_geo3k")
    except (FileNotFoundError, ValueError) as err:
        print(f"[prepare_geo3k] error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[prepare_geo3k] interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
