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
``train.parquet``/``test.parquet`` (e.g. ``cepo.testing.write_geo3k_parquet`` output), a single parquet
file, or a ``datasets.save_to_disk`` directory. Rows without an answer are reported with their split and
index, then skipped (``--on-missing-answer skip``, default) or the script exits with status 2 (``fail``).

Usage:
  python scripts/prepare_geo3k.py --local-dir ~/data/geo3k
  python scripts/prepare_geo3k.py --dataset /path/to/parquet_dir --local-dir /tmp/geo3k --on-missing-answer fail
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import datasets

from cepo.data import missing_answers, student_prompt

DATA_SOURCE = "hiyouga/geometry3k"


class MissingAnswerError(ValueError):
    """Rows without an answer and ``--on-missing-answer fail``."""


def load_source(source: str, splits: list[str]) -> dict[str, datasets.Dataset]:
    """Load the requested splits from a hub name, a parquet dir/file, or a ``save_to_disk`` dir."""
    path = Path(source).expanduser()
    if path.is_file():
        return {splits[0]: datasets.load_dataset("parquet", data_files=str(path), split="train")}
    if path.is_dir():
        files = {s: str(path / f"{s}.parquet") for s in splits if (path / f"{s}.parquet").is_file()}
        if files:
            missing = sorted(set(splits) - set(files))
            if missing:
                raise FileNotFoundError(f"{path} has no {', '.join(m + '.parquet' for m in missing)}")
            return dict(datasets.load_dataset("parquet", data_files=files))
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            return {splits[0]: loaded}
        return {s: loaded[s] for s in splits}
    return {s: datasets.load_dataset(source, split=s) for s in splits}


def to_verl(dataset: datasets.Dataset, split: str, on_missing_answer: str = "skip") -> datasets.Dataset:
    """Convert one split; rows without an answer are reported (stderr) and skipped or raise."""
    for key in ("problem", "answer", "images"):
        if key not in dataset.column_names:
            raise ValueError(f"split {split!r} has no {key!r} column (columns: {dataset.column_names})")
    bad = missing_answers(dataset["answer"])
    if bad:
        print(f"[prepare_geo3k] split {split!r}: rows without an answer: {bad}", file=sys.stderr)
        if on_missing_answer == "fail":
            raise MissingAnswerError(f"split {split!r}: rows {bad} have no answer (use --on-missing-answer skip)")
        keep = sorted(set(range(len(dataset))) - set(bad))
        dataset = dataset.add_column("_orig_index", list(range(len(dataset)))).select(keep)
    else:
        dataset = dataset.add_column("_orig_index", list(range(len(dataset))))

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        answer = str(row["answer"]).strip()
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default=DATA_SOURCE, help="hub name, parquet dir/file, or save_to_disk dir")
    parser.add_argument("--local-dir", default=os.environ.get("DATA_DIR", "~/data/geo3k"),
                        help="output directory for <split>.parquet (default $DATA_DIR or ~/data/geo3k)")
    parser.add_argument("--splits", nargs="+", default=["train", "test"])
    parser.add_argument("--on-missing-answer", choices=["skip", "fail"], default="skip")
    args = parser.parse_args(argv)
    out = Path(args.local_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    try:
        for split, ds in load_source(args.dataset, args.splits).items():
            converted = to_verl(ds, split, args.on_missing_answer)
            converted.to_parquet(str(out / f"{split}.parquet"))
            print(f"[prepare_geo3k] wrote {len(converted)} rows to {out / f'{split}.parquet'}")
    except (MissingAnswerError, FileNotFoundError, ValueError) as err:
        print(f"[prepare_geo3k] error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
