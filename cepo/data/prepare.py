"""What every ``scripts/prepare_*.py`` shares: where a source is, the row checks, and the all-or-nothing write.

* :func:`load_splits`: a source is a Hugging Face hub name, a local data file, a folder of ``<split>.parquet``
  files or a ``datasets.save_to_disk`` folder. A source that looks like a path (:func:`looks_like_path`) and
  does not exist fails as such; an ``owner/name`` that is not a local path is looked up on the hub, and an
  unreachable hub (offline, ``HF_HUB_OFFLINE=1``) fails saying so: the two are never confused.
* :func:`rows_to_drop`: the answer rule of :mod:`cepo.data.answers` (one answer per row; several answers always
  fail) plus the other bad rows a script found, reported with their split and index, then skipped or failed.
* :func:`write_splits`: nothing is written until every split converted; each split goes to a temporary file in the
  output folder and all are renamed into place at the end, so a failure leaves no partial ``<split>.parquet``.

Errors are ``ValueError`` / ``FileNotFoundError`` with one line that names the option, the split and the rows;
the scripts print it and exit with status 2.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cepo.data.answers import answer_problems, describe_answer_problems
from cepo.data.files import SUPPORTED_FORMATS, read_data_file

__all__ = ["HUB_ID", "BadRowsError", "load_splits", "looks_like_path", "rows_to_drop", "write_splits"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""A hub dataset name: ``owner/name`` (or a bare ``name``)."""

_DATA_SUFFIXES = {".parquet", ".json", ".jsonl", ".arrow"}


class BadRowsError(ValueError):
    """Rows that a script refuses to skip (``--on-... fail``); the message names the split and the rows."""


def looks_like_path(source: str) -> bool:
    """True for ``/x``, ``./x``, ``~/x``, ``a/b/c``, ``x.parquet``: never a hub name."""
    return (
        source.startswith(("/", ".", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
        or Path(source).suffix.lower() in _DATA_SUFFIXES
        or not HUB_ID.match(source)
    )


def _load_hub(source: str, splits: list[str], option: str) -> dict[str, Any]:
    import datasets

    try:
        return {s: datasets.load_dataset(source, split=s) for s in splits}
    except ConnectionError as err:
        why = "HF_HUB_OFFLINE is set" if datasets.config.HF_HUB_OFFLINE else f"{err}"
        raise ValueError(
            f"{option} {source!r} is not a local path and the Hugging Face hub cannot be reached to download it "
            f"({why}); run where the hub is reachable, or pass {option} a local parquet dir or file"
        ) from None
    except FileNotFoundError as err:  # datasets' DatasetNotFoundError
        raise FileNotFoundError(
            f"{option} {source!r} is neither a local path nor a dataset on the Hugging Face hub ({err})"
        ) from None
    except ValueError as err:  # an unknown split
        raise ValueError(f"{option} {source!r}: {err}") from None


def load_splits(source: str, splits: list[str], option: str = "--dataset") -> dict[str, Any]:
    """``{split: datasets.Dataset}`` for the requested splits of a hub name, a data dir/file, or a ``save_to_disk``
    folder. A single file is the first requested split. ``option`` names the source in errors (``--math500``)."""
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        return {splits[0]: read_data_file(path, label=option)}
    if path.is_dir():
        files = {s: str(path / f"{s}.parquet") for s in splits if (path / f"{s}.parquet").is_file()}
        if files:
            missing = sorted(set(splits) - set(files))
            if missing:
                raise FileNotFoundError(f"{option} {path} has no {', '.join(m + '.parquet' for m in missing)}")
            return {s: read_data_file(f, label=f"{option} split {s!r}") for s, f in files.items()}
        if not ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()):
            raise FileNotFoundError(
                f"{option} {source!r} holds no {', '.join(s + '.parquet' for s in splits)} and is not a "
                f"datasets.save_to_disk directory; supported: {SUPPORTED_FORMATS}"
            )
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.Dataset):
            return {splits[0]: loaded}
        absent = [s for s in splits if s not in loaded]
        if absent:
            raise ValueError(f"{option} {source!r} has the splits {sorted(loaded)}, not {absent}")
        return {s: loaded[s] for s in splits}
    if looks_like_path(source):
        raise FileNotFoundError(f"{option} {source!r} does not exist (no such file or directory)")
    return _load_hub(source, splits, option)


def rows_to_drop(
    answers: Iterable[Any],
    split: str,
    prog: str,
    on_bad_row: str = "skip",
    other_bad_rows: Mapping[int, str] | None = None,
    fail_option: str = "--on-bad-row",
) -> set[int]:
    """Row indices to skip in one split: rows without an answer plus ``other_bad_rows`` (``{row: why}``).

    A row with several answers raises ``ValueError`` whatever the policy (the verifier grades against one answer
    and never guesses). The bad rows are printed on stderr with the split and their indices; with
    ``on_bad_row="fail"`` they raise :class:`BadRowsError` instead of being skipped.
    """
    problems = answer_problems(answers)
    several = {i: err for i, err in problems.items() if not err.missing}
    if several:
        raise ValueError(f"split {split!r}: {describe_answer_problems(several)}")
    bad = {i: "no answer" for i in problems}
    for row, why in (other_bad_rows or {}).items():
        bad[row] = f"{bad[row]}, {why}" if row in bad else why
    if not bad:
        return set()
    listed = "; ".join(f"row {row}: {why}" for row, why in sorted(bad.items())[:10])
    more = f"; and {len(bad) - 10} more" if len(bad) > 10 else ""
    print(f"[{prog}] split {split!r}: bad rows: {listed}{more}", file=sys.stderr)
    if on_bad_row == "fail":
        raise BadRowsError(f"split {split!r}: rows {sorted(bad)[:10]}{'...' if len(bad) > 10 else ''} are bad "
                           f"({listed.split('; ')[0]}); fix them or use {fail_option} skip")
    return set(bad)


def write_splits(converted: Mapping[str, Any], out: Path, prog: str) -> None:
    """Write every split to ``out/<split>.parquet``: each to a temporary file first, renamed into place only
    when all are written, so a failure leaves no partial file. ``out`` is checked beforehand
    (``cepo.output_paths.check_output_dir``, before any download)."""
    out.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    try:
        for split, dataset in converted.items():
            tmp = out / f".{split}.parquet.tmp-{os.getpid()}"
            staged[split] = tmp
            dataset.to_parquet(str(tmp))
        for split, tmp in staged.items():
            os.replace(tmp, out / f"{split}.parquet")
            print(f"[{prog}] wrote {len(converted[split])} rows to {out / f'{split}.parquet'}")
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
