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
import re
import sys
from pathlib import Path
from typing import Any

import datasets

from cepo.data import answer_problems, answer_text, describe_bad_images, image_problems, student_prompt
from cepo.data.answers import describe_answer_problems
from cepo.data.files import SUPPORTED_FORMATS, read_data_file
from cepo.output_paths import check_output_dir

DATA_SOURCE = "hiyouga/geometry3k"


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""A hub dataset name: ``owner/name`` (or a bare ``name``)."""


class MissingAnswerError(ValueError):
    """Rows without an answer and ``--on-missing-answer fail``."""


class BadImageError(ValueError):
    """Rows whose image cannot be opened and ``--on-bad-image fail``."""


def looks_like_path(source: str) -> bool:
    """True for ``/x``, ``./x``, ``~/x``, ``a/b/c``, ``x.parquet``: never a hub name."""
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
        or Path(source).suffix.lower() in {".parquet", ".json", ".jsonl", ".arrow"}
        or not HUB_ID.match(source)
    )


def _load_hub(source: str, splits: list[str]) -> dict[str, datasets.Dataset]:
    try:
        return {s: datasets.load_dataset(source, split=s) for s in splits}
    except ConnectionError as err:
        why = "HF_HUB_OFFLINE is set" if datasets.config.HF_HUB_OFFLINE else f"{err}"
        raise ValueError(
            f"--dataset {source!r} is not a local path and the Hugging Face hub cannot be reached to download it "
            f"({why}); run where the hub is reachable, or pass --dataset a local parquet dir or file"
        ) from None
    except FileNotFoundError as err:  # datasets' DatasetNotFoundError
        raise FileNotFoundError(
            f"--dataset {source!r} is neither a local path nor a dataset on the Hugging Face hub ({err})"
        ) from None
    except ValueError as err:  # an unknown split
        raise ValueError(f"--dataset {source!r}: {err}") from None


def load_source(source: str, splits: list[str]) -> dict[str, datasets.Dataset]:
    """Load the requested splits from a hub name, a data dir/file, or a ``save_to_disk`` dir."""
    path = Path(source).expanduser()
    if path.is_file():
        return {splits[0]: read_data_file(path, label="--dataset")}
    if path.is_dir():
        files = {s: str(path / f"{s}.parquet") for s in splits if (path / f"{s}.parquet").is_file()}
        if files:
            missing = sorted(set(splits) - set(files))
            if missing:
                raise FileNotFoundError(f"{path} has no {', '.join(m + '.parquet' for m in missing)}")
            return {s: read_data_file(f, label=f"--dataset split {s!r}") for s, f in files.items()}
        if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            raise FileNotFoundError(
                f"--dataset {source!r} holds no {', '.join(s + '.parquet' for s in splits)} and is not a "
                f"datasets.save_to_disk directory; supported: {SUPPORTED_FORMATS}"
            )
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            return {splits[0]: loaded}
        absent = [s for s in splits if s not in loaded]
        if absent:
            raise ValueError(f"--dataset {source!r} has the splits {sorted(loaded)}, not {absent}; use --splits")
        return {s: loaded[s] for s in splits}
    if looks_like_path(source):
        raise FileNotFoundError(f"--dataset {source!r} does not exist (no such file or directory)")
    return _load_hub(source, splits)


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            for split, ds in load_source(args.dataset, args.splits).items()
        }
        write_splits(converted, out)
    except (FileNotFoundError, ValueError) as err:
        print(f"[prepare_geo3k] error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[prepare_geo3k] interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


def write_splits(converted: dict[str, datasets.Dataset], out: Path) -> None:
    """Write every split to ``out/<split>.parquet``: each to a temporary file first, renamed into place only
    when all are written, so a failure leaves no partial file."""
    out.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    try:
        for split, dataset in converted.items():
            tmp = out / f".{split}.parquet.tmp-{os.getpid()}"
            staged[split] = tmp
            dataset.to_parquet(str(tmp))
        for split, tmp in staged.items():
            os.replace(tmp, out / f"{split}.parquet")
            print(f"[prepare_geo3k] wrote {len(converted[split])} rows to {out / f'{split}.parquet'}")
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
