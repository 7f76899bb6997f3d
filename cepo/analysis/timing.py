"""Phase timers and peak-memory probes for step-time benchmarks (no engine imports; torch only for CUDA).

:class:`PhaseTimer` splits a training step into named phases. Phases nest: time spent in an inner phase is
charged to it, not to the phase around it (*exclusive* time), and whatever part of the step no phase claimed is
charged to the step's ``rest`` phase, so the phases of a step always sum to the step's wall time::

    timer = PhaseTimer()
    with timer.step(rest="update"):
        with timer.phase("generation"):
            ...
        with timer.phase("teacher"):
            with timer.phase("teacher_forward"):  # charged to teacher_forward, not teacher
                ...
    timer.steps[-1]  # {"generation": ..., "teacher": ..., "teacher_forward": ..., "update": ..., "total": ...}
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["PeakMemory", "PhaseTimer", "rss_bytes"]


class PhaseTimer:
    """Exclusive wall time per named phase, per step (see the module docstring)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.steps: list[dict[str, float]] = []
        self._stack: list[list[Any]] = []  # [name, start of the current uncharged stretch]
        self._current: dict[str, float] | None = None
        self._step_start = 0.0

    def _charge(self, name: str, seconds: float) -> None:
        if self._current is not None:
            self._current[name] = self._current.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the time inside the block (minus inner phases) to ``name``; a no-op outside a step."""
        now = self.clock()
        if self._stack:  # pause the enclosing phase
            outer = self._stack[-1]
            self._charge(outer[0], now - outer[1])
        self._stack.append([name, now])
        try:
            yield
        finally:
            end = self.clock()
            inner = self._stack.pop()
            self._charge(inner[0], end - inner[1])
            if self._stack:  # resume the enclosing phase
                self._stack[-1][1] = end

    @property
    def active(self) -> str | None:
        """Name of the innermost open phase (``None`` outside phases)."""
        return self._stack[-1][0] if self._stack else None

    def begin_step(self, rest: str = "other") -> dict[str, float]:
        """Start a step (for callers that cannot wrap the step in a ``with``: trainer callbacks); everything not
        inside a phase until :meth:`end_step` is charged to ``rest``."""
        if self._current is not None:
            raise RuntimeError("steps do not nest: end_step() the current one first")
        self._current = {}
        now = self.clock()
        self._step_start = now
        self._stack.append([rest, now])
        return self._current

    def end_step(self) -> dict[str, float]:
        """End the step begun by :meth:`begin_step`; appends and returns its record (with ``"total"``)."""
        if self._current is None or not self._stack:
            raise RuntimeError("end_step() without begin_step()")
        if len(self._stack) != 1:
            raise RuntimeError(f"end_step() inside the open phase {self._stack[-1][0]!r}")
        end = self.clock()
        rest = self._stack.pop()
        self._charge(rest[0], end - rest[1])
        record = self._current
        record["total"] = end - self._step_start
        self._current = None
        self.steps.append(record)
        return record

    @contextmanager
    def step(self, rest: str = "other") -> Iterator[dict[str, float]]:
        """One step: on exit, appends ``{phase: seconds, ..., rest: unclaimed seconds, "total": wall}``."""
        record = self.begin_step(rest)
        try:
            yield record
        finally:
            self.end_step()

    def summary(self, skip: int = 0) -> dict[str, float]:
        """Mean seconds per phase over the recorded steps after the first ``skip`` (a phase missing from a step
        counts 0 there)."""
        steps = self.steps[skip:]
        if not steps:
            return {}
        names = sorted({k for s in steps for k in s})
        return {k: sum(s.get(k, 0.0) for s in steps) / len(steps) for k in names}


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc/self/statm``; ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PeakMemory:
    """Peak memory over a block: CUDA ``max_memory_allocated`` on a CUDA device, else sampled RSS.

    On CPU a thread samples the resident set size every ``interval`` seconds; ``peak_bytes`` is the largest
    sample and ``delta_bytes`` its excess over the RSS at entry (what the block added on top of what was live).
    RSS also counts memory the allocator keeps after a free, so start every measured block from the same state.
    """

    def __init__(self, device: Any = "cpu", interval: float = 0.002) -> None:
        self.device = str(device)
        self.interval = interval
        self.start_bytes = 0
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start_bytes = int(torch.cuda.memory_allocated())
            self.peak_bytes = self.start_bytes
        else:
            self.start_bytes = self.peak_bytes = rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_bytes = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, rss_bytes())

    @property
    def delta_bytes(self) -> int:
        return self.peak_bytes - self.start_bytes
