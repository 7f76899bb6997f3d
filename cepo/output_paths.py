"""Where a command writes: checked before any slow work (warm start, model load, conversion), one line each.

Every command that writes a directory or a file (``cepo smoke --output-dir``, ``cepo train``'s
``trainer.default_local_dir``, ``cepo plot --output``, ``cepo eval --output-dir``, ``prepare_geo3k.py --local-dir``)
checks its location first with :func:`check_output_dir` / :func:`check_output_file`: an empty path, a path that is
a file, a path under a file, and a folder that cannot be created or written to (a read-only mount, ``/sys``,
missing permissions) each raise one ``ValueError`` naming the option, the path and the fix. The writability probe
creates and removes one empty temporary directory in the nearest existing folder, so a path that does not exist
yet is checked without being created (a failed command leaves nothing behind).

:func:`disk_full` recognises a write that failed for lack of space (``ENOSPC`` anywhere in the exception chain, or
torch's stream errors with less than :data:`LOW_SPACE_BYTES` free where the run writes).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["LOW_SPACE_BYTES", "DiskFull", "check_output_dir", "check_output_file", "disk_full"]

LOW_SPACE_BYTES = 16 * 2**20
"""Below this many free bytes, a failed write (torch's ``basic_ios::clear: iostream error`` or ``unexpected pos``,
which carry no errno) is taken to be a full disk."""


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_output_dir(path: str | Path, option: str) -> Path:
    """``path`` as a ``Path`` once it is known that a directory can be created or written there.

    ``option`` names the setting in the message (``--output-dir``, ``trainer.default_local_dir``). Raises
    ``ValueError`` for an empty path, a file, a path under a file, and a location that cannot be written to.
    Nothing is created.
    """
    text = str(path)
    if not text.strip():
        raise ValueError(f"{option} is empty; give a directory (e.g. runs/my-run)")
    target = Path(text).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{option} {text!r} is a file, not a directory; choose another {option}")
    _check_creatable(target, option, text)
    return target


def _check_creatable(target: Path, option: str, text: str) -> None:
    """``target`` (a directory, or a file's folder) can be created or written: its nearest existing ancestor is a
    folder where a directory can be made. ``text`` is the path as the user gave it."""
    existing = _nearest_existing(target)
    if not existing.is_dir():
        raise ValueError(f"{option} {text!r} is under {str(existing)!r}, which is a file, not a directory; "
                         f"choose another {option}")
    try:
        probe = tempfile.mkdtemp(prefix=".cepo-write-check-", dir=existing)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"{option} {text!r} cannot be written: {reason} in {str(existing)!r}; choose a writable "
                         f"{option}") from None
    os.rmdir(probe)


def check_output_file(path: str | Path, option: str, suffix: str) -> Path:
    """``path`` as a ``Path`` once it is known to be a writable file name ending in ``suffix`` (e.g. ``.png``).

    Raises ``ValueError`` for an empty path, an existing directory, a name without ``suffix`` (the writer would
    add it, and the printed path would not be the written one), and a folder that cannot be written.
    """
    text = str(path)
    if not text.strip():
        raise ValueError(f"{option} is empty; give a file name ending in {suffix}")
    target = Path(text).expanduser()
    if target.is_dir():
        raise ValueError(f"{option} {text!r} is a directory; give a file name in it, e.g. "
                         f"{option} {str(Path(text) / ('curves' + suffix))!r}")
    if target.suffix.lower() != suffix:
        raise ValueError(f"{option} {text!r} does not end in {suffix}; give a {suffix} file name, e.g. "
                         f"{option} {text + suffix!r}")
    _check_creatable(target.parent, option, text)
    return target


def disk_full(err: BaseException, directory: str | Path) -> bool:
    """True when ``err`` (or an exception it was raised from) means the disk holding ``directory`` is full."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ENOSPC:
            return True
        current = current.__cause__ or current.__context__
    if not isinstance(err, OSError | RuntimeError):
        return False
    try:
        free = shutil.disk_usage(_nearest_existing(Path(directory))).free
    except OSError:
        return False
    return free < LOW_SPACE_BYTES


class DiskFull(OSError):
    """A run could not write a checkpoint or its result: no space left on the device holding ``run_dir``.
    ``step`` is the step reached, ``checkpoint`` the last complete checkpoint (``None`` if none was saved); a
    half-written one stays as ``tmp-*`` and is removed by the resumed run."""

    def __init__(self, run_dir: Path, step: int, checkpoint: Path | None) -> None:
        super().__init__(errno.ENOSPC, f"no space left on device in {run_dir} at step {step}; last checkpoint: "
                                       f"{checkpoint}")
        self.run_dir, self.step, self.checkpoint = run_dir, step, checkpoint
