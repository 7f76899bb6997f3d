"""Evaluation results: one JSON layout for ``cepo eval`` (lmms-eval, lm-eval or ``--local``) and Table 2 in Markdown.

An evaluation JSON (``eval.json``, :class:`EvalResult`) holds, in percent::

    {"format": "cepo-eval/1", "label": "CEPO", "model": "...", "method": "cepo", "evaluator": "lmms-eval",
     "backend": "vllm", "sampling": {...}, "ignored_settings": [...],
     "benchmarks": {"dynamath": {"accuracy": 51.44, "stderr": 0.71, "n": 5010, "task": "dynamath_reasoning",
                                 "metric": "dynamath_average", "stderr_source": "binomial"}, ...},
     "average": {"accuracy": 43.43, "stderr": 0.77, "benchmarks": ["dynamath", ...]}}

A benchmark sampled k times per problem (the text benchmarks through lm-eval, ``--local --samples k``) reports
avg@k, the mean over problems of the fraction of k samples correct, with ``"samples_per_problem": k`` and the
standard error over problems (standard deviation of the per-problem fractions / sqrt(n)).

The average is the unweighted mean over benchmarks (as the paper's "Average Acc."), its standard error
``sqrt(sum se_i^2) / k`` (independent benchmarks): the paper's 39.73 ± 0.8 for the 2B base model is exactly this.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cepo.evaluation.benchmarks import BENCHMARKS, TEXT_BENCHMARKS

FORMAT = "cepo-eval/1"
METHOD_LABELS = {"grpo": "GRPO", "rlsd": "RLSD", "cepo": "CEPO", "opsd": "OPSD", "sdpo": "SDPO", "conspo": "ConSPO"}


def binomial_stderr(accuracy: float, n: int) -> float:
    """Standard error of an accuracy (a fraction in [0, 1]) over ``n`` questions: ``sqrt(p (1 - p) / n)``."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return math.sqrt(max(0.0, accuracy * (1.0 - accuracy)) / n)


@dataclass
class BenchmarkScore:
    """One benchmark's result, in percent."""

    accuracy: float
    stderr: float | None
    n: int | None
    task: str | None = None
    metric: str | None = None
    stderr_source: str | None = None
    """``lmms-eval`` (its own stderr), ``clt`` (lmms-eval's CLT stderr) or ``binomial`` (ours, from accuracy and n)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        extra = out.pop("extra")
        out.update(extra)
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> BenchmarkScore:
        if not isinstance(data, Mapping) or not isinstance(data.get("accuracy"), int | float):
            raise ValueError(f"{where}: a benchmark entry needs a numeric 'accuracy' (percent)")
        known = {"accuracy", "stderr", "n", "task", "metric", "stderr_source"}
        stderr = data.get("stderr")
        return cls(
            accuracy=float(data["accuracy"]),
            stderr=float(stderr) if isinstance(stderr, int | float) else None,
            n=int(data["n"]) if isinstance(data.get("n"), int | float) else None,
            task=data.get("task"),
            metric=data.get("metric"),
            stderr_source=data.get("stderr_source"),
            extra={k: v for k, v in data.items() if k not in known},
        )


def average(scores: Mapping[str, BenchmarkScore]) -> dict[str, Any] | None:
    """Unweighted mean accuracy over ``scores`` and its standard error (``None`` when any stderr is unknown)."""
    if not scores:
        return None
    values = list(scores.values())
    mean = sum(s.accuracy for s in values) / len(values)
    errors = [s.stderr for s in values]
    stderr = None if any(e is None for e in errors) else math.sqrt(sum(e * e for e in errors)) / len(values)
    return {"accuracy": mean, "stderr": stderr, "benchmarks": list(scores)}


@dataclass
class EvalResult:
    """What ``cepo eval`` writes (module docstring)."""

    label: str
    benchmarks: dict[str, BenchmarkScore]
    model: str | None = None
    method: str | None = None
    evaluator: str | None = None
    backend: str | None = None
    sampling: dict[str, Any] | None = None
    ignored_settings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "label": self.label,
            "model": self.model,
            "method": self.method,
            "evaluator": self.evaluator,
            "backend": self.backend,
            "sampling": self.sampling,
            "ignored_settings": self.ignored_settings,
            "benchmarks": {name: score.as_dict() for name, score in self.benchmarks.items()},
            "average": average(self.benchmarks),
        }
        out.update(self.extra)
        return out

    def write(self, path: str | Path) -> Path:
        """Write the JSON (through a temporary file, so a reader never sees half of it)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> EvalResult:
        benchmarks = data.get("benchmarks")
        if not isinstance(benchmarks, Mapping) or not benchmarks:
            raise ValueError(f"{where}: no 'benchmarks' in this evaluation JSON")
        known = {"format", "label", "model", "method", "evaluator", "backend", "sampling", "ignored_settings",
                 "benchmarks", "average"}
        return cls(
            label=str(data.get("label") or data.get("model") or Path(where).stem),
            benchmarks={str(k): BenchmarkScore.from_dict(v, f"{where} [{k}]") for k, v in benchmarks.items()},
            model=data.get("model"),
            method=data.get("method"),
            evaluator=data.get("evaluator"),
            backend=data.get("backend"),
            sampling=data.get("sampling"),
            ignored_settings=list(data.get("ignored_settings") or []),
            extra={k: v for k, v in data.items() if k not in known},
        )


_GENERIC_PARTS = {"final", "lora_adapter", "actor", "huggingface", "hf", "merged"}


def default_label(method: str | None, model: str | None, kind: str = "hub") -> str:
    """The row label of a result: the method of the run it came from (``CEPO``); ``Base`` for a hub model; else
    the last two informative parts of the checkpoint path (``cepo_geo3k/global_step_50`` for
    ``.../cepo_geo3k/global_step_50/actor/lora_adapter``)."""
    if method:
        return METHOD_LABELS.get(method.lower(), method)
    if kind == "hub" or not model:
        return "Base"
    parts = [p for p in Path(model).expanduser().parts if p not in ("/", ".", "..")]
    while parts and parts[-1] in _GENERIC_PARTS:
        parts.pop()
    return "/".join(parts[-2:]) or str(model)


# -- Table 2 ---------------------------------------------------------------------------------------------------
def _columns(results: Sequence[EvalResult]) -> list[str]:
    present = {name for r in results for name in r.benchmarks}
    ordered = [name for name in [*BENCHMARKS, *TEXT_BENCHMARKS] if name in present]
    return ordered + sorted(present - set(ordered))


def samples_of(score: BenchmarkScore | None) -> int | None:
    """k of an avg@k score (``samples_per_problem``), ``None`` for a one-sample accuracy."""
    k = score.extra.get("samples_per_problem") if score is not None else None
    return k if isinstance(k, int) and not isinstance(k, bool) else None


def _column_k(results: Sequence[EvalResult], column: str) -> int | None:
    """The k all rows of a column share (``None`` when they differ or none has one)."""
    ks = {samples_of(r.benchmarks.get(column)) for r in results if column in r.benchmarks}
    return ks.pop() if len(ks) == 1 else None


def _title(name: str, k: int | None = None) -> str:
    bench = BENCHMARKS.get(name) or TEXT_BENCHMARKS.get(name)
    title = bench.title if bench else name
    return f"{title} avg@{k}" if k is not None and k > 1 else title


def _cell(score: BenchmarkScore | dict[str, Any] | None, best: bool, k: int | None = None) -> str:
    """``accuracy ± stderr``; ``k`` (a row's own avg@k when the column's rows differ) is appended as ``(avg@k)``."""
    if score is None:
        return "–"
    accuracy = score["accuracy"] if isinstance(score, dict) else score.accuracy
    stderr = score["stderr"] if isinstance(score, dict) else score.stderr
    number = f"{accuracy:.2f}"
    number = f"**{number}**" if best else number
    cell = number if stderr is None else f"{number} ± {stderr:.1f}"
    return cell if k is None else f"{cell} (avg@{k})"


def _best(values: list[float | None]) -> list[bool]:
    known = [v for v in values if v is not None]
    if len(known) < 2:
        return [False] * len(values)
    top = max(round(v, 2) for v in known)
    return [v is not None and round(v, 2) == top for v in values]


def table2_markdown(results: Sequence[EvalResult]) -> str:
    """Table 2's layout: one row per result (label), one column per benchmark (paper order), then the average;
    ``accuracy ± stderr`` in percent (avg@k for a benchmark sampled k times per problem: the header says
    ``avg@k`` when every row has the same k, else each cell does), the best value of each column in bold (ties:
    all of them; nothing is bold with fewer than two rows). A row missing a benchmark shows ``–`` there and has
    no average: an average over fewer benchmarks is not comparable."""
    if not results:
        raise ValueError("no results to tabulate")
    columns = _columns(results)
    rows_avg: list[dict[str, Any] | None] = []
    for r in results:
        full = all(c in r.benchmarks for c in columns)
        rows_avg.append(average({c: r.benchmarks[c] for c in columns}) if full else None)
    shared = {c: _column_k(results, c) for c in columns}
    header = ["Method", *(_title(c, shared[c]) for c in columns), "Average Acc."]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bold = {c: _best([r.benchmarks[c].accuracy if c in r.benchmarks else None for r in results]) for c in columns}
    bold_avg = _best([a["accuracy"] if a else None for a in rows_avg])
    for i, r in enumerate(results):
        cells = [r.label.replace("|", "\\|")]
        cells += [_cell(r.benchmarks.get(c), bold[c][i],
                        None if shared[c] is not None else samples_of(r.benchmarks.get(c))) for c in columns]
        cells.append(_cell(rows_avg[i], bold_avg[i]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
