"""Find the images of a dataset that cannot be opened, before anything trains on them.

A training row's image may be a PIL image, a ``datasets`` image (``{"bytes", "path"}``), or a file path (JSON
data). :func:`image_problems` opens every one of them (fully decoded, so a truncated file is caught too) and
returns the row, the column and the reason for each that fails: random bytes, a missing file, a null entry.
``cepo train`` (``cepo.integrations.trl.data``) and ``scripts/prepare_geo3k.py`` use it and then either skip
those rows or fail naming them.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["BadImage", "ImageDecodeError", "describe_bad_images", "image_problems", "open_image"]


class ImageDecodeError(ValueError):
    """An image value that cannot be opened; the message says why."""


@dataclass(frozen=True)
class BadImage:
    """One image that cannot be opened: ``row`` of the dataset, ``column``, ``position`` in the row's list
    (``None`` for a single-image column) and ``reason``."""

    row: int
    column: str
    position: int | None
    reason: str


def open_image(value: Any) -> Any:
    """Open and fully decode one image value (PIL image, ``{"bytes", "path"}`` dict, or path); return the PIL image.

    Raises ``ImageDecodeError`` saying why it cannot be opened.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value
    data, path = None, None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
    elif isinstance(value, str | os.PathLike):
        path = os.fspath(value)
    elif isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif value is None:
        raise ImageDecodeError("no image (null)")
    else:
        raise ImageDecodeError(f"not an image: a {type(value).__name__}")
    if data is None:
        if not path:
            raise ImageDecodeError("no image (neither bytes nor a path)")
        if not os.path.isfile(os.path.expanduser(path)):
            raise ImageDecodeError(f"image file {path!r} does not exist")
        source: Any = os.path.expanduser(path)
    else:
        source = io.BytesIO(data)
    try:
        image = Image.open(source)
        image.load()
    except UnidentifiedImageError:
        raise ImageDecodeError("not a decodable image (PIL cannot identify the format)") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ImageDecodeError(f"not a decodable image ({err})") from None
    return image


def _without_decoding(feature: Any) -> Any:
    import datasets

    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, datasets.List):
        return datasets.List(_without_decoding(feature.feature), length=feature.length)
    return feature


def image_problems(dataset: Any, column: str, batch_size: int = 64) -> list[BadImage]:
    """Every image of ``dataset[column]`` that cannot be opened (empty when all open), in row order.

    The column may hold one image per row or a list of images; an empty list (a text-only row) is fine.
    """
    feature = dataset.features[column]
    raw = dataset.select_columns([column])
    undecoded = _without_decoding(feature)
    if undecoded != feature:
        raw = raw.cast_column(column, undecoded)
    problems: list[BadImage] = []
    row = 0
    for batch in raw.iter(batch_size=batch_size):
        for value in batch[column]:
            values = list(value) if isinstance(value, list | tuple) else [value]
            for position, item in enumerate(values):
                try:
                    open_image(item)
                except ImageDecodeError as err:
                    where = position if isinstance(value, list | tuple) else None
                    problems.append(BadImage(row, column, where, str(err)))
            row += 1
    return problems


def describe_bad_images(problems: list[BadImage], limit: int = 3) -> str:
    """``"row 2 (images[0]): not a decodable image ...; row 7 ..."`` for the first ``limit`` problems."""
    parts = []
    for bad in problems[:limit]:
        where = bad.column if bad.position is None else f"{bad.column}[{bad.position}]"
        parts.append(f"row {bad.row} ({where}): {bad.reason}")
    more = len(problems) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
