"""Checkpoints that are either complete or absent, and a resume that never trips over a broken one.

transformers 5.10's ``Trainer._save_checkpoint`` writes straight into ``checkpoint-<step>/`` (model, then
optimizer, scheduler, RNG state, ``trainer_state.json`` last), and ``get_last_checkpoint`` picks the highest
step with no check at all: a crash mid-save leaves a ``checkpoint-<step>/`` that ``--resume`` then loads and
fails on (``Expecting ',' delimiter`` from a truncated ``trainer_state.json``, a traceback from a truncated
``optimizer.pt``).

* :class:`AtomicCheckpointMixin` (a ``Trainer`` mixin, used by ``CEPOTrainer``) saves each checkpoint into
  ``tmp-checkpoint-<step>/`` and renames it to ``checkpoint-<step>/`` only when every file is written; the
  rename is atomic, so ``checkpoint-<step>/`` is complete or absent. A ``tmp-checkpoint-*`` left by a crash is
  never resumed from (nor counted as a checkpoint) and is removed by the next save of that step or by the next
  run (:func:`remove_staging`).
* :func:`checkpoint_problems` checks one checkpoint without loading it: ``trainer_state.json`` parses, the
  weights, ``optimizer.pt`` and ``scheduler.pt`` are there, every ``.safetensors`` file has the size its header
  promises, every torch file (``.pt``/``.pth``/``.bin``) is a complete zip archive, every ``.json`` parses.
* :func:`find_resumable_checkpoint` returns the newest complete checkpoint of a run directory and the newer
  ones it skipped, with the reasons.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "STAGING_PREFIX",
    "AtomicCheckpointMixin",
    "ResumeChoice",
    "checkpoint_problems",
    "checkpoint_step",
    "find_resumable_checkpoint",
    "list_checkpoints",
    "publish_directory",
    "remove_staging",
]

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
STAGING_PREFIX = "tmp-"
"""``tmp-checkpoint-<step>/`` (and ``tmp-final/``): written first, renamed when complete. The name does not
match transformers' ``checkpoint-*`` globs, so its rotation and ``get_last_checkpoint`` never see it."""

WEIGHT_FILES = (
    "adapter_model.safetensors",
    "adapter_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
REQUIRED_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a ``checkpoint-<step>`` directory name, else ``None``."""
    match = CHECKPOINT_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>/`` directories of a run, oldest (lowest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes, no header)"
            (header_len,) = struct.unpack("<Q", head)
            if 8 + header_len > size:
                return f"{path.name} is truncated ({size} bytes, header promises more)"
            header = json.loads(handle.read(header_len))
    except (ValueError, UnicodeDecodeError):
        return f"{path.name} has a corrupt header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and "data_offsets" in t]
    expected = 8 + header_len + (max(ends) if ends else 0)
    if size < expected:
        return f"{path.name} is truncated ({size} of {expected} bytes)"
    return None


def _torch_file_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return f"{path.name} is truncated or corrupt (not a complete torch archive)"
    size = path.stat().st_size
    if any(info.header_offset + info.compress_size > size for info in infos):
        return f"{path.name} is truncated"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        return f"{path.name} is not valid JSON, truncated or corrupt ({err})"
    return None


def checkpoint_problems(path: str | Path) -> list[str]:
    """Why ``path`` cannot be resumed from (empty list: it is complete). Reads headers only, loads nothing."""
    path = Path(path)
    if not path.is_dir():
        return [f"{path} is not a directory"]
    problems = [f"{name} is missing" for name in REQUIRED_FILES if not (path / name).is_file()]
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        problems.append("no model weights (adapter_model.safetensors or model.safetensors) are there")
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        problem = None
        if file.suffix in (".safetensors", ".pt", ".pth", ".bin", ".json") and file.stat().st_size == 0:
            problem = f"{file.name} is empty"
        elif file.suffix == ".safetensors":
            problem = _safetensors_problem(file)
        elif file.suffix in (".pt", ".pth", ".bin"):
            problem = _torch_file_problem(file)
        elif file.suffix == ".json":
            problem = _json_problem(file)
            if problem is None and file.name.endswith(".index.json"):
                shards = set(json.loads(file.read_text()).get("weight_map", {}).values())
                absent = sorted(s for s in shards if not (path / s).is_file())
                problem = f"{file.name} lists missing shards {absent}" if absent else None
        if problem:
            problems.append(problem)
    return problems


@dataclass
class ResumeChoice:
    """The checkpoint to resume from (``None`` if no complete one) and the newer ones skipped, with reasons."""

    checkpoint: Path | None
    skipped: list[tuple[Path, list[str]]] = field(default_factory=list)

    def describe_skipped(self) -> str:
        """``"checkpoint-3 (optimizer.pt is truncated); checkpoint-2 (...)"``."""
        return "; ".join(f"{p.name} ({', '.join(problems)})" for p, problems in self.skipped)


def find_resumable_checkpoint(run_dir: str | Path) -> ResumeChoice:
    """The newest complete ``checkpoint-<step>/`` of ``run_dir``, and every newer one skipped with its problems."""
    choice = ResumeChoice(None)
    for path in reversed(list_checkpoints(run_dir)):
        problems = checkpoint_problems(path)
        if not problems:
            choice.checkpoint = path
            break
        choice.skipped.append((path, problems))
    return choice


def publish_directory(staged: Path, final: Path) -> None:
    """Move the complete ``staged`` directory to ``final`` (replacing an older ``final``) by renames only."""
    old = None
    if final.exists():
        old = final.with_name(f"{STAGING_PREFIX}old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staged, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_staging(run_dir: str | Path) -> list[Path]:
    """Delete the ``tmp-*`` directories a crashed save left in ``run_dir``; returns what was removed."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    stale = [p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith(STAGING_PREFIX)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


class AtomicCheckpointMixin:
    """``Trainer`` mixin: every checkpoint is written to ``tmp-checkpoint-<step>/``, then renamed.

    Put it before the trainer class: ``class MyTrainer(AtomicCheckpointMixin, GRPOTrainer)``. It redirects
    ``_get_output_dir`` to the staging directory while the base classes save (transformers' and TRL's
    ``_save_checkpoint`` both write below ``_get_output_dir()``), renames the finished checkpoint into the
    run directory, then applies ``save_total_limit`` there.
    """

    _cepo_staging: str | None = None

    def _get_output_dir(self, trial: Any) -> str:
        if self._cepo_staging is not None:
            return self._cepo_staging
        return super()._get_output_dir(trial)  # type: ignore[misc]

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        run_dir = Path(self._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"  # type: ignore[attr-defined]
        staging = run_dir / f"{STAGING_PREFIX}{name}"
        args = self.args  # type: ignore[attr-defined]
        if args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self._cepo_staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        finally:
            self._cepo_staging = None
        self.accelerator.wait_for_everyone()  # type: ignore[attr-defined]
        if not args.should_save:
            return
        publish_directory(staging / name, run_dir / name)
        shutil.rmtree(staging, ignore_errors=True)
        best = self.state.best_model_checkpoint  # type: ignore[attr-defined]
        if best and Path(best).parent == staging:
            best = self.state.best_model_checkpoint = str(run_dir / Path(best).name)  # type: ignore[attr-defined]
        rotate_checkpoints(str(run_dir), args.save_total_limit, best_model_checkpoint=best, use_mtime=False)
