"""The paper's five benchmarks, their lmms-eval 0.7.3 tasks, and the paper's sampling settings; and the text
benchmarks (MATH-500, AIME 2024, AIME 2025, :data:`TEXT_BENCHMARKS`) that ``cepo eval`` runs through
lm-evaluation-harness (``cepo.evaluation.lm_eval``) with k samples per problem (avg@k).

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


# -- the text benchmarks (lm-evaluation-harness, cepo.evaluation.lm_eval) ---------------------------------------
TEXT_GROUP = "text"
"""``--benchmarks text``: the three text benchmarks."""


@dataclass(frozen=True)
class TextBenchmark:
    """One text benchmark: our name, its column title, cepo's lm-eval task, the hub data it reads, the lm-eval task
    of the same problems (kept for the registry check) and the default number of samples per problem."""

    name: str
    title: str
    task: str
    dataset_path: str
    split: str
    upstream_task: str
    default_samples: int
    problems: int


TEXT_BENCHMARKS: dict[str, TextBenchmark] = {
    b.name: b
    for b in (
        # MATH-500: avg@4 (500 problems x 4 keeps the run short; the standard error is already ~1 point)
        TextBenchmark("math500", "MATH-500", "cepo_math500", "HuggingFaceH4/MATH-500", "test", "hendrycks_math500",
                      4, 500),
        # AIME: 30 problems, so one sample per problem is too noisy; avg@32 as DAPO (Yu et al., 2025) reports AIME 2024
        TextBenchmark("aime24", "AIME 2024", "cepo_aime24", "HuggingFaceH4/aime_2024", "train", "aime24", 32, 30),
        TextBenchmark("aime25", "AIME 2025", "cepo_aime25", "yentinglin/aime_2025", "train", "aime25", 32, 30),
    )
}
"""The text benchmarks, in report order; the data are the hub copies ``scripts/prepare_math.py`` converts."""

_TEXT_ALIASES = {
    "math-500": "math500", "math_500": "math500", "aime2024": "aime24", "aime_2024": "aime24",
    "aime2025": "aime25", "aime_2025": "aime25",
}


def is_text_selection(names: str | Iterable[str] | None) -> bool:
    """Whether a ``--benchmarks`` value names text benchmarks (``text`` or any of :data:`TEXT_BENCHMARKS`)."""
    if names is None:
        return False
    items = [n.strip().lower() for n in (names.split(",") if isinstance(names, str) else names) if n and n.strip()]
    known = set(TEXT_BENCHMARKS) | set(_TEXT_ALIASES) | {b.task for b in TEXT_BENCHMARKS.values()} | {TEXT_GROUP}
    return any(item in known for item in items)


def resolve_text_benchmarks(names: str | Iterable[str]) -> list[TextBenchmark]:
    """Text benchmarks from a comma-separated string or list (our names, aliases such as ``aime2024``, cepo's task
    names, or ``text`` for all three). A vision benchmark or unknown name raises ``ValueError``."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n and n.strip()]
    by_task = {b.task: b for b in TEXT_BENCHMARKS.values()}
    out: list[TextBenchmark] = []
    for item in items:
        key = _TEXT_ALIASES.get(item.lower(), item.lower())
        one = TEXT_BENCHMARKS.get(key) or by_task.get(item)
        chosen = list(TEXT_BENCHMARKS.values()) if key == TEXT_GROUP else [one]
        if chosen == [None]:
            if key in BENCHMARKS:
                raise ValueError(f"--benchmarks mixes the text benchmark(s) with the vision benchmark {item!r}; "
                                 "evaluate them in two cepo eval runs (text: lm-eval, vision: lmms-eval)")
            raise ValueError(f"unknown benchmark {item!r}; text benchmarks: {', '.join(TEXT_BENCHMARKS)} "
                             f"(or '{TEXT_GROUP}' for all three)")
        out += [b for b in chosen if b is not None and b not in out]
    return out


def samples_per_problem(benchmark: TextBenchmark, samples: int | None) -> int:
    """k for ``benchmark``: ``samples`` (``--samples``) or the benchmark's default."""
    k = benchmark.default_samples if samples is None else samples
    if k <= 0:
        raise ValueError(f"--samples must be a positive number of samples per problem, got {k}")
    return k
