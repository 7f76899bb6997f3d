"""Read one training-data file in any format ``datasets`` reads, chosen by its extension.

Supported: ``.parquet``, ``.json`` / ``.jsonl`` (JSON lines or a JSON array), ``.arrow``, and a
``datasets.save_to_disk`` directory (its ``train`` split, or its only split). Every failure is a
``ValueError`` / ``FileNotFoundError`` that names the file: a missing file, an empty file, a file with no
rows, an unsupported extension, a file that is not what its extension says.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cepo.text_files import read_utf8

__all__ = ["SUPPORTED_FORMATS", "read_data_file"]

SUPPORTED_FORMATS = ".parquet, .json, .jsonl, .arrow, or a datasets.save_to_disk directory"
_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".arrow": "arrow"}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No output of ``datasets``' own while it reads a file: no "Generating train split" bar, and no logged copy of
    a parse error (datasets logs it on stderr, and once more through the root logger where verl configured one),
    which :func:`read_data_file` reports in its own one line."""
    from datasets.utils import logging as ds_logging

    logger = logging.getLogger("datasets")
    level, bar = logger.level, ds_logging.is_progress_bar_enabled()
    logger.setLevel(logging.CRITICAL)
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(level)
        if bar:
            ds_logging.enable_progress_bar()


def _from_disk(path: Path, label: str, split: str) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split in loaded:
            return loaded[split]
        if len(loaded) == 1:
            return next(iter(loaded.values()))
        raise ValueError(f"{label} {str(path)!r} holds the splits {sorted(loaded)} but no {split!r}; point at one")
    return loaded


def read_data_file(path: str | Path, label: str = "data file", split: str = "train") -> Any:
    """One file (or ``save_to_disk`` directory) as a ``datasets.Dataset``; ``label`` names it in errors
    (e.g. ``"data.train_files entry"``). ``~`` is expanded. A file without rows is an error."""
    import datasets

    shown = str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{label} {shown!r} does not exist")
    if p.is_dir():
        if not ((p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file()):
            raise ValueError(
                f"{label} {shown!r} is a directory but not a datasets.save_to_disk one (no dataset_info.json or "
                f"dataset_dict.json); supported: {SUPPORTED_FORMATS}"
            )
        dataset = _from_disk(p, label, split)
    else:
        builder = _BUILDERS.get(p.suffix.lower())
        if builder is None:
            kind = p.suffix or "(no extension)"
            raise ValueError(f"{label} {shown!r}: unsupported format {kind!r}; supported: {SUPPORTED_FORMATS}")
        if p.stat().st_size == 0:
            raise ValueError(f"{label} {shown!r} is empty (0 bytes)")
        if builder == "parquet":
            import pyarrow.parquet as pq

            try:
                rows = pq.ParquetFile(p).metadata.num_rows
            except Exception as err:
                raise ValueError(f"{label} {shown!r} is not a readable parquet file ({_first_line(err)})") from None
            if rows == 0:
                raise ValueError(f"{label} {shown!r} has no rows")
        elif builder == "json" and not read_utf8(p, label).strip():  # pyarrow's reader lets bad bytes through
            raise ValueError(f"{label} {shown!r} is empty (only whitespace)")
        try:
            with _quiet_datasets():
                dataset = datasets.load_dataset(builder, data_files=str(p), split="train")
        except Exception as err:
            cause = err.__cause__ or err.__context__ or err
            raise ValueError(f"{label} {shown!r} could not be read as {builder} ({_first_line(cause)})") from None
    if len(dataset) == 0:
        raise ValueError(f"{label} {shown!r} has no rows")
    return dataset
