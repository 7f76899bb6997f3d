"""The paper's five benchmarks, their lmms-eval 0.7.3 tasks, and the paper's sampling settings.

One table (:data:`BENCHMARKS`) maps our benchmark names to lmms-eval tasks and to the metric read from lmms-eval's
result file. Every task name and metric below was checked against the task YAML files of the lmms-eval 0.7.3 wheel
(``lmms_eval/tasks/<folder>/...``):

* ``dynamath``: task ``dynamath_reasoning``, metric ``dynamath_average`` (0-1), ``dynamath/reasoning/dynamath.yaml``
* ``logicvista``: ``logicvista_reasoning``, ``acc_score`` (0-1), ``logicvista/reasoning/logicvista_thinking.yaml``
* ``mathvision``: ``mathvision_testmini``, ``mathvision_standard_eval`` (0-100), ``mathvision/mathvision_testmini.yaml``
* ``mmmu``: ``mmmu_val``, ``mmmu_acc`` (0-1), ``mmmu/mmmu_val.yaml``
* ``wemath``: ``wemath_testmini_reasoning``, ``acc_score`` (0-1), ``wemath/reasoning/wemath_testmini_thinking.yaml``

The metric is each task's per-question accuracy (DynaMath: the average over variants, not the worst case; WeMath:
the per-question ``acc_score``, not the four-dimensional loose/strict scores), which is what the paper's standard
errors imply: its ``±`` values equal ``sqrt(p (1 - p) / n)`` with the benchmarks' question counts (e.g. DynaMath
50.08 ± 0.7 with n = 5010, WeMath 52.24 ± 1.2 with n = 1740).

The paper evaluates with temperature 1.0, top-p 1.0, top-k 40, presence penalty 2.0 and at most 32,000 new tokens
(:data:`PAPER_SAMPLING`). lmms-eval reads the length as ``max_new_tokens``: a ``max_tokens`` key (as in the authors'
README) is silently ignored and the task's own limit applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

LMMS_EVAL_VERSION = "0.7.3"
"""The lmms-eval release the task names and metrics below were checked against."""


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: our name, its column title in Table 2, its lmms-eval task and the metric we report."""

    name: str
    title: str
    task: str
    metric: str
    scale: float
    """What the metric's value means as 100 %: 1.0 for a fraction, 100.0 for a value already in percent."""
    task_yaml: str


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("dynamath", "DynaMath", "dynamath_reasoning", "dynamath_average", 1.0,
                  "dynamath/reasoning/dynamath.yaml"),
        Benchmark("logicvista", "LogicVista", "logicvista_reasoning", "acc_score", 1.0,
                  "logicvista/reasoning/logicvista_thinking.yaml"),
        Benchmark("mathvision", "MathVis.m", "mathvision_testmini", "mathvision_standard_eval", 100.0,
                  "mathvision/mathvision_testmini.yaml"),
        Benchmark("mmmu", "MMMU", "mmmu_val", "mmmu_acc", 1.0, "mmmu/mmmu_val.yaml"),
        Benchmark("wemath", "WeMath", "wemath_testmini_reasoning", "acc_score", 1.0,
                  "wemath/reasoning/wemath_testmini_thinking.yaml"),
    )
}
"""Table 2's columns, in the paper's order."""

_ALIASES = {
    "mathvision-mini": "mathvision",
    "mathvision_mini": "mathvision",
    "mathvis": "mathvision",
}


def resolve_benchmarks(names: str | Iterable[str] | None) -> list[Benchmark]:
    """Benchmarks from a comma-separated string or a list of names (ours or lmms-eval task names); ``None`` or
    ``"all"`` gives all five. An unknown name raises ``ValueError`` listing the known ones."""
    if names is None:
        return list(BENCHMARKS.values())
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n and n.strip()]
    if not items or items == ["all"]:
        return list(BENCHMARKS.values())
    by_task = {b.task: b for b in BENCHMARKS.values()}
    out: list[Benchmark] = []
    for item in items:
        key = _ALIASES.get(item.lower(), item.lower())
        bench = BENCHMARKS.get(key) or by_task.get(item)
        if bench is None:
            raise ValueError(
                f"unknown benchmark {item!r}; known: {', '.join(BENCHMARKS)} (or their lmms-eval tasks: "
                f"{', '.join(by_task)}), or 'all'"
            )
        if bench not in out:
            out.append(bench)
    return out


@dataclass(frozen=True)
class SamplingSettings:
    """Generation settings, with lmms-eval's / vLLM's names. ``top_k = 0`` and ``presence_penalty = 0`` disable
    those filters; ``temperature = 0`` is greedy decoding."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 40
    presence_penalty: float = 2.0
    max_new_tokens: int = 32000

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"--top-k must be >= 0 (0 = off), got {self.top_k}")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"--presence-penalty must be in [-2, 2] (vLLM's range), got {self.presence_penalty}")
        if self.max_new_tokens <= 0:
            raise ValueError(f"--max-new-tokens must be positive, got {self.max_new_tokens}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_changes(self, **changes: Any) -> SamplingSettings:
        """A copy with the given fields changed (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def active(self) -> dict[str, Any]:
        """The settings that change sampling away from plain ancestral sampling (what a backend must honour)."""
        out: dict[str, Any] = {"temperature": self.temperature, "max_new_tokens": self.max_new_tokens}
        if self.top_p < 1:
            out["top_p"] = self.top_p
        if self.top_k > 0:
            out["top_k"] = self.top_k
        if self.presence_penalty != 0:
            out["presence_penalty"] = self.presence_penalty
        return out


PAPER_SAMPLING = SamplingSettings()
"""The paper's evaluation sampling (Sec. 4): temperature 1.0, top-p 1.0, top-k 40, presence penalty 2.0, 32,000
new tokens."""
