"""``cepo report RUN_OR_JSON...``: several evaluations side by side in Table 2's layout (Markdown).

Each argument is one row:

* an evaluation JSON written by ``cepo eval`` (``eval.json``, with or without ``--local``);
* an lmms-eval result file (``*_results.json``): the paper's benchmarks found in it;
* an lm-eval result file (``results_<date>.json``) of cepo's text tasks: MATH-500 / AIME avg@k found in it;
* a directory: its ``eval.json``, else ``eval/eval.json`` (a TRL run directory evaluated with the default output
  directory), else every lmms-eval and lm-eval result file below it (the newest one per task).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cepo.evaluation.benchmarks import BENCHMARKS
from cepo.evaluation.lmms import check_gen_kwargs, read_results_file, score_from_results
from cepo.evaluation.results import EvalResult, table2_markdown


def _from_lmms_files(files: Sequence[Path], where: str) -> EvalResult:
    scores = {}
    model = None
    for path in sorted(files, key=lambda p: p.stat().st_mtime):  # newer files win
        data = read_results_file(path)
        for note in check_gen_kwargs(data):
            print(f"cepo report: warning: {path}: {note}", file=sys.stderr)
        config = data.get("config") or {}
        model = model or (config.get("model_args") if isinstance(config, dict) else None)
        for bench in BENCHMARKS.values():
            if bench.task in data["results"]:
                scores[bench.name] = score_from_results(data, bench, str(path))
    if not scores:
        raise ValueError(f"{where}: its lmms-eval result files hold none of the tasks "
                         f"{', '.join(b.task for b in BENCHMARKS.values())}")
    ordered = {name: scores[name] for name in BENCHMARKS if name in scores}
    return EvalResult(label=Path(where).name, benchmarks=ordered, model=model, evaluator="lmms-eval")


def _from_lm_eval_files(files: Sequence[Path], where: str) -> dict[str, Any]:
    """Scores of cepo's text tasks in lm-eval result files (newer files win) and the model they name."""
    from cepo.evaluation import lm_eval

    scores: dict[str, Any] = {}
    model = None
    for path in sorted(files, key=lambda p: p.stat().st_mtime):
        try:
            data = lm_eval.read_results_file(path)
        except ValueError:
            continue
        if not lm_eval.is_results_file(data):
            continue
        config = data.get("config") or {}
        model = model or (str(config.get("model_args")) if isinstance(config, dict) and config.get("model_args")
                          else None)
        for bench in lm_eval.TEXT_BENCHMARKS.values():
            if bench.task in data["results"]:
                scores[bench.name] = lm_eval.score_from_results(data, bench, str(path))
    return {"scores": scores, "model": model}


def _from_result_files(lmms_files: Sequence[Path], lm_eval_files: Sequence[Path], where: str) -> EvalResult:
    """One row from the lmms-eval and lm-eval result files found for ``where``."""
    from cepo.evaluation.lm_eval import TEXT_BENCHMARKS

    text = _from_lm_eval_files(lm_eval_files, where)
    if not lmms_files:
        if not text["scores"]:
            raise ValueError(f"{where}: its lm-eval result files hold none of the tasks "
                             f"{', '.join(b.task for b in TEXT_BENCHMARKS.values())}")
        ordered = {name: text["scores"][name] for name in TEXT_BENCHMARKS if name in text["scores"]}
        return EvalResult(label=Path(where).name, benchmarks=ordered, model=text["model"], evaluator="lm-eval")
    if not text["scores"]:
        return _from_lmms_files(lmms_files, where)
    row = _from_lmms_files(lmms_files, where)
    row.benchmarks.update({name: text["scores"][name] for name in TEXT_BENCHMARKS if name in text["scores"]})
    row.evaluator = "lmms-eval, lm-eval"
    return row


def load_result(path: str | Path) -> EvalResult:
    """One row of the table from ``path`` (module docstring); ``FileNotFoundError`` / ``ValueError`` name it."""
    shown = str(path)
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{shown!r} does not exist; pass an eval.json, an lmms-eval *_results.json, an "
                                "lm-eval results_*.json or a run directory evaluated with cepo eval")
    if p.is_dir():
        for candidate in (p / "eval.json", p / "eval" / "eval.json"):
            if candidate.is_file():
                return load_result(candidate)
        files = list(p.rglob("*_results.json"))
        text_files = list(p.rglob("results_*.json"))
        if files or text_files:
            return _from_result_files(files, text_files, shown)
        raise ValueError(f"{shown!r} holds no eval.json, eval/eval.json, lmms-eval *_results.json or lm-eval "
                         f"results_*.json; evaluate it first (cepo eval {shown})")
    try:
        data: Any = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{shown!r} is not a JSON file ({err})") from None
    if isinstance(data, dict) and "benchmarks" in data:
        return EvalResult.from_dict(data, shown)
    if isinstance(data, dict) and "results" in data:
        from cepo.evaluation.lm_eval import is_results_file

        return _from_result_files([], [p], shown) if is_results_file(data) else _from_lmms_files([p], shown)
    raise ValueError(f"{shown!r} is neither a cepo eval.json (no 'benchmarks') nor an lmms-eval or lm-eval result "
                     "file (no 'results')")


def build_report(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> str:
    """Table 2 (Markdown) for ``paths``, one row each, in order; ``labels`` replaces the rows' labels."""
    if not paths:
        raise ValueError("pass at least one eval.json, lmms-eval result file or run directory")
    results = [load_result(p) for p in paths]
    if labels:
        if len(labels) != len(results):
            raise ValueError(f"--labels has {len(labels)} names for {len(results)} inputs; give one per input")
        for result, label in zip(results, labels, strict=True):
            result.label = label
    return table2_markdown(results)
