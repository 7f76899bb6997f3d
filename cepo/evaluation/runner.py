"""``cepo eval MODEL``: the paper's benchmarks through lmms-eval, or the text benchmarks through lm-eval (each a
separate program), one run per benchmark.

Layout of ``--output-dir`` (default: ``<run>/eval`` for a model from a TRL run directory, else
``eval/<model name>``)::

    eval.json                      per-benchmark accuracy ± stderr and the average (cepo.evaluation.results)
    lmms-eval/<benchmark>/         lmms-eval's --output_path: <model>/<date>_results.json, samples, lmms-eval.log
    lm-eval/<benchmark>/           lm-eval's --output_path: <model>/results_<date>.json, samples, lm-eval.log, and
                                   tasks/ (the task folder cepo wrote for it: YAML with k, utils.py)

A benchmark whose result file is already there is read, not run again (``--overwrite`` runs it again), so an
interrupted evaluation continues where it stopped. ``eval.json`` is rewritten after every benchmark.
"""

from __future__ import annotations

import contextlib
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cepo.evaluation.benchmarks import LMMS_EVAL_VERSION, Benchmark, SamplingSettings
from cepo.evaluation.lm_eval import TextBenchmark
from cepo.evaluation.lmms import (
    BACKENDS,
    Backend,
    LmmsEvalFailed,
    build_command,
    check_gen_kwargs,
    find_python,
    find_results_file,
    ignored_settings,
    lmms_eval_version,
    read_results_file,
    run_command,
    score_from_results,
)
from cepo.evaluation.models import ModelSource, merged_checkpoint, resolve_model
from cepo.evaluation.results import BenchmarkScore, EvalResult, default_label


def backend_named(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"--backend {name!r} is not one of {', '.join(BACKENDS)}")
    return BACKENDS[name]


def default_output_dir(source: ModelSource) -> Path:
    """``<run>/eval`` for a model from a TRL run directory, else ``eval/<last two parts of the model name>``."""
    if source.run_dir is not None:
        return source.run_dir / "eval"
    parts = [p for p in re.split(r"[\\/]+", source.given) if p and p not in (".", "..", "~")]
    return Path("eval") / "__".join(parts[-2:] or ["model"])


def existing_score(output: Path, benchmark: Benchmark) -> BenchmarkScore | None:
    """The benchmark's score from a result file already under ``output`` (``None`` when there is none for its
    task)."""
    found = find_results_file(output)
    if found is None:
        return None
    try:
        data = read_results_file(found)
    except ValueError:
        return None
    if benchmark.task not in data["results"]:
        return None
    return score_from_results(data, benchmark, str(found))


@dataclass
class PlannedRun:
    """One benchmark's lmms-eval run: where it writes and its command (with ``{model}`` for the model path)."""

    benchmark: Benchmark
    output: Path
    command: list[str]


def evaluate_lmms(
    model: str,
    benchmarks: Sequence[Benchmark],
    sampling: SamplingSettings,
    *,
    backend: str = "vllm",
    python: str | None = None,
    base: str | None = None,
    output_dir: str | Path | None = None,
    label: str | None = None,
    batch_size: int = 64,
    limit: int | None = None,
    model_args: Mapping[str, str] | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    echo: bool = True,
    warn: Callable[[str], None] | None = None,
) -> tuple[EvalResult, Path] | list[PlannedRun]:
    """Evaluate ``model`` on ``benchmarks`` with lmms-eval (module docstring); returns the result and the path of
    ``eval.json``. ``dry_run`` returns the planned commands instead, without running anything (the interpreter need
    not exist; an adapter's merged path shows as ``<merged adapter>``)."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    chosen = backend_named(backend)
    source = resolve_model(model, base)
    for setting in ignored_settings(chosen, sampling):
        warn(f"cepo eval: warning: the {chosen.name} backend (lmms-eval {chosen.lmms_model}) ignores {setting}; "
             "use --backend vllm for the paper's sampling")
    out_dir = Path(output_dir) if output_dir else default_output_dir(source)
    if dry_run:
        interpreter = python or find_python_or_placeholder()
        model_path = "<merged adapter>" if source.is_adapter else source.path
        return [PlannedRun(b, out_dir / "lmms-eval" / b.name,
                           build_command(interpreter, b, model_path, chosen, sampling,
                                         (out_dir / "lmms-eval" / b.name).resolve(), batch_size, limit, model_args))
                for b in benchmarks]
    scores: dict[str, BenchmarkScore] = {}
    pending: list[Benchmark] = []
    for bench in benchmarks:
        output = out_dir / "lmms-eval" / bench.name
        score = None if overwrite else existing_score(output, bench)
        if score is not None:
            warn(f"cepo eval: {bench.name}: reusing {find_results_file(output)} (--overwrite runs it again)")
            scores[bench.name] = score
        else:
            pending.append(bench)
    result = EvalResult(
        label=label or default_label(source.method(), source.given, source.kind),
        benchmarks=scores,
        model=source.given,
        method=source.method(),
        evaluator=f"lmms-eval {LMMS_EVAL_VERSION}",
        backend=chosen.name,
        sampling=sampling.as_dict(),
        ignored_settings=ignored_settings(chosen, sampling),
        extra={"base_model": source.base} if source.base else {},
    )
    if pending:
        interpreter = find_python(python)
        version = lmms_eval_version(interpreter)
        if version != LMMS_EVAL_VERSION:
            warn(f"cepo eval: warning: {interpreter} has lmms-eval {version}; the task and metric table was checked "
                 f"against {LMMS_EVAL_VERSION}")
        with _model_for_lmms(source, out_dir) as model_path:
            for bench in pending:
                output = (out_dir / "lmms-eval" / bench.name).resolve()
                command = build_command(interpreter, bench, model_path, chosen, sampling, output, batch_size, limit,
                                        model_args)
                log = output / "lmms-eval.log"
                if echo:
                    print(f"cepo eval: {bench.name}: {shlex.join(command)}", file=sys.stderr, flush=True)
                code = run_command(command, log, echo=echo)
                found = find_results_file(output)
                if code != 0 or found is None:
                    raise LmmsEvalFailed(
                        f"lmms-eval failed on {bench.name} (task {bench.task}, exit code {code}"
                        f"{'' if found else ', no result file'}); its log: {log}"
                    )
                data = read_results_file(found)
                for note in check_gen_kwargs(data):
                    warn(f"cepo eval: warning: {found}: {note}")
                result.benchmarks[bench.name] = score_from_results(data, bench, str(found))
                result.write(out_dir / "eval.json")
    result.benchmarks = {b.name: result.benchmarks[b.name] for b in benchmarks if b.name in result.benchmarks}
    return result, result.write(out_dir / "eval.json")


def find_python_or_placeholder() -> str:
    """The configured lmms-eval interpreter, or ``$CEPO_LMMS_EVAL_PYTHON`` as text when none is configured."""
    try:
        return find_python(None)
    except (ValueError, FileNotFoundError):
        return "$CEPO_LMMS_EVAL_PYTHON"


@contextlib.contextmanager
def _model_for_lmms(source: ModelSource, out_dir: Path) -> Iterator[str]:
    with merged_checkpoint(source, out_dir) as path:
        yield str(Path(path).resolve()) if Path(path).exists() else path


# -- the text benchmarks through lm-eval --------------------------------------------------------------------------
@dataclass
class PlannedTextRun:
    """One text benchmark's lm-eval run: where it writes, its k and its command."""

    benchmark: TextBenchmark
    output: Path
    samples: int
    command: list[str]


def existing_text_score(output: Path, benchmark: TextBenchmark, samples: int) -> BenchmarkScore | None:
    """The benchmark's score from an lm-eval result file already under ``output`` with the same k (``None`` when
    there is none)."""
    from cepo.evaluation import lm_eval

    found = lm_eval.find_results_file(output, benchmark.task)
    if found is None:
        return None
    try:
        data = lm_eval.read_results_file(found)
        if lm_eval.samples_in_file(data, benchmark) != samples:
            return None
        return lm_eval.score_from_results(data, benchmark, str(found))
    except ValueError:
        return None


def evaluate_lm_eval(
    model: str,
    benchmarks: Sequence[TextBenchmark],
    sampling: SamplingSettings,
    *,
    samples: int | None = None,
    backend: str = "vllm",
    python: str | None = None,
    base: str | None = None,
    output_dir: str | Path | None = None,
    label: str | None = None,
    batch_size: int | str = "auto",
    limit: int | None = None,
    model_args: Mapping[str, Any] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    device: str | None = None,
    data_files: Mapping[str, str | Path] | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    echo: bool = True,
    warn: Callable[[str], None] | None = None,
) -> tuple[EvalResult, Path] | list[PlannedTextRun]:
    """Evaluate ``model`` on the text ``benchmarks`` with lm-eval (``cepo.evaluation.lm_eval``): avg@k with k =
    ``samples`` or each benchmark's default. Returns the result and the path of ``eval.json``; ``dry_run`` returns
    the planned commands instead (the interpreter need not exist). ``device`` is the HF backend's (default: cuda
    when available, else cpu); ``data_files`` maps benchmark names to local copies of their problems."""
    from cepo.evaluation import lm_eval

    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if backend not in lm_eval.BACKENDS:
        raise ValueError(f"--backend {backend!r} is not one of {', '.join(lm_eval.BACKENDS)} (text benchmarks, "
                         "lm-eval)")
    chosen = lm_eval.BACKENDS[backend]
    ks = {b.name: lm_eval.samples_per_problem(b, samples) for b in benchmarks}
    if sampling.temperature == 0 and any(k > 1 for k in ks.values()):
        raise ValueError(f"--temperature 0 (greedy) gives the same response {max(ks.values())} times per problem; "
                         "pass --samples 1 for greedy decoding, or a temperature above 0")
    source = resolve_model(model, base)
    for setting in ignored_settings(chosen, sampling):
        warn(f"cepo eval: warning: the {chosen.name} backend (lm-eval {chosen.lmms_model}) ignores {setting}; "
             "use --backend vllm for the paper's sampling")
    if chosen.name == "hf" and device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    out_dir = Path(output_dir) if output_dir else default_output_dir(source)

    def command_for(interpreter: str, bench: TextBenchmark, model_path: str) -> list[str]:
        output = (out_dir / "lm-eval" / bench.name).resolve()
        return lm_eval.build_command(interpreter, bench, model_path, chosen, sampling, output, output / "tasks",
                                     batch_size, limit, model_args, chat_template_kwargs,
                                     device if chosen.name == "hf" else None)

    if dry_run:
        interpreter = python or _lm_eval_python_or_placeholder()
        model_path = "<merged adapter>" if source.is_adapter else source.path
        return [PlannedTextRun(b, out_dir / "lm-eval" / b.name, ks[b.name], command_for(interpreter, b, model_path))
                for b in benchmarks]
    scores: dict[str, BenchmarkScore] = {}
    pending: list[TextBenchmark] = []
    for bench in benchmarks:
        output = out_dir / "lm-eval" / bench.name
        score = None if overwrite else existing_text_score(output, bench, ks[bench.name])
        if score is not None:
            warn(f"cepo eval: {bench.name}: reusing {lm_eval.find_results_file(output, bench.task)} "
                 "(--overwrite runs it again)")
            scores[bench.name] = score
        else:
            pending.append(bench)
    result = EvalResult(
        label=label or default_label(source.method(), source.given, source.kind),
        benchmarks=scores,
        model=source.given,
        method=source.method(),
        evaluator=f"lm-eval {lm_eval.LM_EVAL_VERSION}",
        backend=chosen.name,
        sampling=sampling.as_dict(),
        ignored_settings=ignored_settings(chosen, sampling),
        extra={k: v for k, v in (("base_model", source.base),
                                  ("chat_template_kwargs", dict(chat_template_kwargs or {}) or None)) if v},
    )
    if pending:
        interpreter = lm_eval.find_python(python)
        version = lm_eval.lm_eval_version(interpreter)
        if version != lm_eval.LM_EVAL_VERSION:
            warn(f"cepo eval: warning: {interpreter} has lm-eval {version}; the task layout and result file were "
                 f"checked against {lm_eval.LM_EVAL_VERSION}")
        with _model_for_lmms(source, out_dir) as model_path:
            for bench in pending:
                output = (out_dir / "lm-eval" / bench.name).resolve()
                lm_eval.write_task_dir(output / "tasks", [bench], ks, data_files)
                command = command_for(interpreter, bench, model_path)
                log = output / "lm-eval.log"
                if echo:
                    print(f"cepo eval: {bench.name}: {shlex.join(command)}", file=sys.stderr, flush=True)
                code = run_command(command, log, echo=echo)
                found = lm_eval.find_results_file(output, bench.task)
                if code != 0 or found is None:
                    raise lm_eval.LmEvalFailed(
                        f"lm-eval failed on {bench.name} (task {bench.task}, exit code {code}"
                        f"{'' if found else ', no result file'}); its log: {log}"
                    )
                data = lm_eval.read_results_file(found)
                result.benchmarks[bench.name] = lm_eval.score_from_results(data, bench, str(found))
                result.write(out_dir / "eval.json")
    result.benchmarks = {b.name: result.benchmarks[b.name] for b in benchmarks if b.name in result.benchmarks}
    return result, result.write(out_dir / "eval.json")


def _lm_eval_python_or_placeholder() -> str:
    """The configured lm-eval interpreter, or ``$CEPO_LM_EVAL_PYTHON`` as text when none is configured."""
    from cepo.evaluation import lm_eval

    try:
        return lm_eval.find_python(None)
    except (ValueError, FileNotFoundError):
        return f"${lm_eval.PYTHON_ENV}"
