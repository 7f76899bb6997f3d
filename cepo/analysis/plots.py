"""Training curves of one or more runs, overlaid (paper Figs. 1 and 4): ``cepo plot RUN...``.

Supported logs (:func:`load_run` picks by content):

* **TRL** run directories (``cepo train`` / ``cepo smoke``): ``metrics.jsonl``, one JSON object per logged step
  (``{"step": 3, "reward": ..., "cepo/lambda": ..., ...}``, ``cepo.integrations.trl.run.MetricsFileCallback``).
* **verl** ``file`` logger (``trainer.logger=[console,file]``): a JSONL file with one ``{"step": N, "data": {...}}``
  per step (verl 0.9.1 ``verl.utils.tracking.FileLogger``; written to ``$VERL_FILE_LOGGER_PATH`` or
  ``$VERL_FILE_LOGGER_ROOT/<project>/<experiment>.jsonl``). Pass the file or a directory holding it.
* **verl** ``console`` logger output saved to a file (``... | tee train.log``): lines ``step:N - key:value - ...``
  (``verl.utils.logger.LocalLogger``), also behind Ray's ``(TaskRunner pid=...)`` prefix.

wandb, mlflow, swanlab, tensorboard, clearml and trackio logs are not read: export them, or add ``file`` to verl's
``trainer.logger``.

Panels (each drawn when at least one run logged it): reward, accuracy, λ, the delta sign fractions of Fig. 4
(positive solid, negative dashed), the clip rate, and the teacher time per step.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# panel -> (title, y label, [(series name, candidate keys in order)])
PANELS: dict[str, tuple[str, str, list[tuple[str, tuple[str, ...]]]]] = {
    "reward": ("Reward", "mean reward", [("reward", ("reward", "critic/score/mean", "critic/rewards/mean"))]),
    "accuracy": ("Accuracy", "accuracy", [("accuracy", ("accuracy", "cepo/accuracy", "val/accuracy",
                                                        "re:^val-core/.*/acc/mean@\\d+$",
                                                        "re:^val-core/.*/reward/mean@\\d+$"))]),
    "lambda": ("λ (modulation strength)", "λ", [("lambda", ("cepo/lambda",))]),
    "delta": ("Contrastive delta sign (Fig. 4)", "fraction of tokens",
              [("Δ > 0", ("cepo/delta_pos_frac",)), ("Δ < 0", ("cepo/delta_neg_frac",))]),
    "clip": ("Clip rate", "fraction of tokens clipped", [("clip rate", ("cepo/clip_rate",))]),
    "teacher": ("Teacher time", "seconds per step", [("teacher", ("cepo/teacher_seconds", "cepo/teacher_time_s"))]),
}

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
"""One marker per run, in order."""

_CONSOLE = re.compile(r"(?:^|\s)step:(\d+) - (.*)$")
_WRAPPED = re.compile(r"[A-Za-z_][\w.]*\((.*)\)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf", re.IGNORECASE)


@dataclass
class RunLog:
    """One run's metrics: ``rows[i]`` holds the metrics logged at step ``steps[i]``."""

    label: str
    source: str  # "trl", "verl-file" or "verl-console"
    path: Path
    steps: list[int] = field(default_factory=list)
    rows: list[dict[str, float]] = field(default_factory=list)

    def metric_names(self) -> set[str]:
        return {k for row in self.rows for k in row}

    def resolve(self, candidates: Sequence[str]) -> str | None:
        """The first of ``candidates`` this run logged (``re:`` prefix: a regular expression over the keys)."""
        keys = self.metric_names()
        for candidate in candidates:
            if candidate.startswith("re:"):
                pattern = re.compile(candidate[3:])
                match = sorted(k for k in keys if pattern.match(k))
                if match:
                    return match[0]
            elif candidate in keys:
                return candidate
        return None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        xs, ys = [], []
        for step, row in zip(self.steps, self.rows, strict=True):
            value = row.get(key)
            if value is not None and math.isfinite(value):
                xs.append(step)
                ys.append(value)
        return xs, ys


def _numeric(data: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[key] = float(value)
        elif isinstance(value, list) and len(value) == 1 and isinstance(value[0], int | float):
            out[key] = float(value[0])
    return out


def _console_value(text: str) -> float | None:
    """A number as ``pprint`` prints it: ``0.5``, ``3``, ``np.float64(0.5)``, ``tensor(0.5000)``."""
    text = text.strip()
    wrapped = _WRAPPED.fullmatch(text)
    if wrapped:
        text = wrapped.group(1).split(",")[0].strip()
    match = _NUMBER.fullmatch(text)
    return float(match.group(0)) if match else None


def _read_jsonl(path: Path) -> tuple[str, list[int], list[dict[str, float]]] | None:
    steps, rows, kind = [], [], None
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            if number == 1:
                return None
            raise ValueError(f"{path}: line {number} is not JSON") from None
        if not isinstance(obj, dict) or "step" not in obj:
            return None
        if isinstance(obj.get("data"), dict):
            kind = kind or "verl-file"
            metrics = _numeric(obj["data"])
        else:
            kind = kind or "trl"
            metrics = _numeric({k: v for k, v in obj.items() if k != "step"})
        steps.append(int(obj["step"]))
        rows.append(metrics)
    return (kind or "trl", steps, rows) if steps else None


def _read_console(path: Path) -> tuple[str, list[int], list[dict[str, float]]] | None:
    by_step: dict[int, dict[str, float]] = {}
    for line in path.read_text(errors="replace").splitlines():
        match = _CONSOLE.search(line)
        if not match:
            continue
        row = by_step.setdefault(int(match.group(1)), {})
        for item in match.group(2).split(" - "):
            key, sep, value = item.partition(":")
            number = _console_value(value) if sep else None
            if number is not None:
                row[key.strip()] = number
    if not by_step:
        return None
    steps = sorted(by_step)
    return "verl-console", steps, [by_step[s] for s in steps]


def load_run(path: str | Path, label: str | None = None) -> RunLog:
    """Read one run (module docstring). ``FileNotFoundError`` / ``ValueError`` name the path and what was expected."""
    shown = str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"run {shown!r} does not exist")
    candidates: list[Path]
    if p.is_dir():
        if (p / "metrics.jsonl").is_file():
            candidates = [p / "metrics.jsonl"]
        else:
            candidates = sorted(p.glob("*.jsonl")) + sorted(p.glob("*.log"))
        if not candidates:
            raise ValueError(
                f"run {shown!r} has no metrics: expected metrics.jsonl (TRL run directory), a verl file-logger "
                "*.jsonl, or a verl console *.log"
            )
    else:
        candidates = [p]
    for file in candidates:
        parsed = _read_jsonl(file) if file.suffix == ".jsonl" else None
        parsed = parsed or _read_console(file)
        if parsed is None and file.suffix != ".jsonl":
            parsed = _read_jsonl(file)
        if parsed is not None:
            kind, steps, rows = parsed
            name = label or (p.name if p.is_dir() else p.stem)
            return RunLog(label=name, source=kind, path=file, steps=steps, rows=rows)
    raise ValueError(
        f"run {shown!r} has no metrics rows in {', '.join(str(c) for c in candidates)}: expected TRL metrics.jsonl "
        "rows, verl file-logger rows {\"step\": N, \"data\": {...}}, or verl console lines 'step:N - key:value'"
    )


def plot_runs(
    runs: Sequence[RunLog], output: str | Path, panels: Sequence[str] | None = None, title: str | None = None
) -> tuple[Path, list[str]]:
    """Overlay ``runs`` on one PNG, one panel per metric in ``panels`` (default: all of :data:`PANELS` that some run
    logged). Returns the path and the panels drawn. ``ValueError`` when no run logged any of them."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    wanted = list(panels or PANELS)
    unknown = [p for p in wanted if p not in PANELS]
    if unknown:
        raise ValueError(f"unknown panel(s) {unknown}; known: {', '.join(PANELS)}")
    drawn = [name for name in wanted
             if any(run.resolve(keys) for run in runs for _, keys in PANELS[name][2])]
    if not drawn:
        logged = sorted({k for run in runs for k in run.metric_names()})
        raise ValueError(f"none of the runs logged a metric of the panels {wanted} (their metrics: "
                         f"{', '.join(logged[:12])}{', ...' if len(logged) > 12 else ''})")
    cols = min(3, len(drawn))
    rows = math.ceil(len(drawn) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, drawn, strict=False):
        panel_title, ylabel, series = PANELS[name]
        seen: dict[tuple[tuple[int, ...], tuple[float, ...]], str] = {}
        for r, run in enumerate(runs):
            colour = colours[r % len(colours)]
            for s, (series_name, keys) in enumerate(series):
                key = run.resolve(keys)
                if key is None:
                    continue
                xs, ys = run.series(key)
                if not xs:
                    continue
                label = run.label if len(series) == 1 else f"{run.label}: {series_name}"
                same = seen.setdefault((tuple(xs), tuple(ys)), label)
                if same != label:  # drawn over an identical curve: say so, and keep both visible (markers below)
                    label += f" (= {same})"
                # each run its own marker, earlier runs' larger, so a run drawn over an identical one stays visible
                ax.plot(xs, ys, color=colour, linestyle="-" if s == 0 else "--", marker=MARKERS[r % len(MARKERS)],
                        markersize=3 + 2 * (len(runs) - 1 - r), markevery=max(1, len(xs) // 25),
                        markerfacecolor="none", label=label)
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines and (len(runs) > 1 or len(series) > 1):
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path, drawn
