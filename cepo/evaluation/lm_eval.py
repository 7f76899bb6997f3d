"""The text benchmarks (MATH-500, AIME 2024, AIME 2025) through lm-evaluation-harness, run as a separate program.

lm-eval 0.4.13 with its ``math`` extra cannot share verl's environment (it pins ``antlr4-python3-runtime==4.11``;
verl's Hydra/OmegaConf need 4.9), so, as for lmms-eval, cepo never imports it: ``cepo eval`` runs
``<python> -m lm_eval run ...`` with the interpreter of a separate virtualenv (``--lm-eval-python`` or
``$CEPO_LM_EVAL_PYTHON``) and parses the ``results_<date>.json`` it writes. Setup (:data:`SETUP_LINE`; vLLM 0.24.0
and transformers 5.9.0 are what verl 0.9.1 was tested with, and lm-eval's vllm extra accepts vLLM >= 0.18)::

    python3.11 -m venv ~/.venvs/lm-eval && ~/.venvs/lm-eval/bin/pip install "lm-eval[math,vllm]==0.4.13" \\
        vllm==0.24.0 transformers==5.9.0

(resolved with uv for Python 3.11 on linux x86_64: torch 2.11.0, antlr4 4.11.0, math-verify 0.9.0.)

Why lm-evaluation-harness and not lighteval (both read for this, versions on PyPI in December 2026): lighteval
0.13.0 has ``aime24``/``aime25``/``math_500`` with an ``avg@n`` metric, but its vllm extra pins ``vllm<0.10.2``
(verl 0.9.1 runs vLLM 0.24) and it renders chat templates without template variables, so a Qwen3 model trained
with ``enable_thinking=false`` (configs/text/) would be evaluated thinking. lm-eval 0.4.13 takes vLLM >= 0.18 and
passes ``enable_thinking`` to the chat template (vLLM and HF backends).

lm-eval's own ``hendrycks_math500``, ``aime24`` and ``aime25`` tasks are base-model tasks: a ``Question: ...
Answer:`` prompt, one greedy sample (``repeats: 1``, ``take_first``) and string-normalised exact match. cepo
therefore writes its own task folder (``--include_path``) per run, :func:`write_task_dir`: tasks
``cepo_math500``, ``cepo_aime24``, ``cepo_aime25`` on the same hub copies ``scripts/prepare_math.py`` converts
(lighteval's and open-r1's), with

* the student prompt of training (``cepo.data.student_prompt``) under the model's chat template
  (``--apply_chat_template``; ``--no-thinking`` adds ``enable_thinking=false``),
* ``repeats: k`` and a ``take_first_k`` filter (``k_samples``): k sampled responses per problem,
* ``process_results`` from :mod:`cepo.evaluation.lm_eval_task_utils`: each response's last ``\\boxed{}`` graded by
  math-verify; metrics ``avg_at_k`` (fraction of the k right) and ``pass_at_k``, both ``mean``-aggregated.

So the reported accuracy is avg@k, the mean over problems of the fraction of k samples correct, and its standard
error is lm-eval's for a mean: the sample standard deviation of the per-problem fractions over sqrt(n).

lm-eval's result file (``EvaluationTracker.save_results_aggregated``): ``<output_path>/<model name sanitized>/
results_<date>.json`` with ``results[<task>]["avg_at_k,k_samples"]``, ``"avg_at_k_stderr,k_samples"`` (a number,
or ``"N/A"`` for a single problem), ``"pass_at_k,k_samples"``; ``"n-samples"[<task>]["effective"]`` (problems
scored), ``"configs"[<task>]["repeats"]`` (k) and ``"config"["gen_kwargs"]``.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cepo.evaluation.benchmarks import (  # noqa: F401 - the text table, re-exported
    TEXT_BENCHMARKS,
    TEXT_GROUP,
    SamplingSettings,
    TextBenchmark,
    is_text_selection,
    resolve_text_benchmarks,
    samples_per_problem,
)
from cepo.evaluation.interpreter import find_interpreter, installed_version
from cepo.evaluation.lmms import Backend
from cepo.evaluation.results import BenchmarkScore

LM_EVAL_VERSION = "0.4.13"
"""The lm-evaluation-harness release the task layout, CLI and result file below were checked against."""
PYTHON_ENV = "CEPO_LM_EVAL_PYTHON"
SETUP_LINE = (
    'python3.11 -m venv ~/.venvs/lm-eval && ~/.venvs/lm-eval/bin/pip install "lm-eval[math,vllm]==0.4.13" '
    "vllm==0.24.0 transformers==5.9.0"
)
FILTER = "k_samples"
"""The tasks' filter name: metric keys are ``"avg_at_k,k_samples"``."""
METRIC = "avg_at_k"
BACKENDS: dict[str, Backend] = {
    # lm-eval 0.4.13's vllm class (models/vllm_causallms.py) passes temperature, top_p, top_k and presence_penalty to
    # vLLM's SamplingParams and reads max_gen_toks; the hf class hands them to transformers' generate, which has no
    # presence penalty (cepo leaves it out and warns)
    "vllm": Backend("vllm", "vllm", "pretrained",
                    frozenset({"temperature", "top_p", "top_k", "presence_penalty", "max_new_tokens"}),
                    (("max_model_len", "40000"), ("dtype", "bfloat16"))),
    "hf": Backend("hf", "hf", "pretrained", frozenset({"temperature", "top_p", "top_k", "max_new_tokens"})),
}


# -- the task folder ---------------------------------------------------------------------------------------------
def _task_yaml(benchmark: TextBenchmark, k: int, data_file: str | None) -> str:
    """One task YAML (``!function`` tags, so written as text; every value is JSON, which YAML reads as is)."""
    q = json.dumps
    if data_file is None:
        dataset = [f"dataset_path: {q(benchmark.dataset_path)}", f"test_split: {q(benchmark.split)}"]
    else:  # a local copy of the problems (an offline machine, the tests): one split named as the hub's
        kind = "parquet" if data_file.endswith(".parquet") else "json"
        dataset = [f"dataset_path: {kind}", "dataset_kwargs:",
                   f"  data_files: {{{q(benchmark.split)}: {q(data_file)}}}", f"test_split: {q(benchmark.split)}"]
    lines = [
        f"# written by cepo eval (cepo.evaluation.lm_eval.write_task_dir): {benchmark.title}, avg@{k}",
        f"task: {benchmark.task}",
        *dataset,
        "output_type: generate_until",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: !function utils.doc_to_target",
        "process_results: !function utils.process_results",
        f"repeats: {k}",
        "filter_list:",
        f"  - name: {FILTER}",
        "    filter:",
        "      - function: take_first_k",
        f"        k: {k}",
        "generation_kwargs:",
        "  until: []",  # only the end-of-sequence token stops a response (no task-level stop strings)
        "  do_sample: true",  # cepo eval's --gen_kwargs set it from the temperature
        "num_fewshot: 0",
        "metric_list:",
        f"  - metric: {METRIC}",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: pass_at_k",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
        f"  samples_per_problem: {k}",
    ]
    return "\n".join(lines) + "\n"


def write_task_dir(
    directory: str | Path,
    benchmarks: Iterable[TextBenchmark],
    samples: Mapping[str, int],
    data_files: Mapping[str, str | Path] | None = None,
) -> Path:
    """Write cepo's lm-eval tasks for ``benchmarks`` (k = ``samples[name]``) and their ``utils.py`` into
    ``directory`` (lm-eval's ``--include_path``). ``data_files`` maps a benchmark name to a local ``.jsonl`` /
    ``.parquet`` copy with ``problem`` and ``answer`` columns, read instead of the hub."""
    from cepo.data.geo3k import STUDENT_PROMPT_SUFFIX
    from cepo.evaluation import lm_eval_task_utils

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    source = inspect.getsource(lm_eval_task_utils)
    marker = "PROMPT_SUFFIX: str | None = None"
    if marker not in source:  # pragma: no cover - guards an edit of lm_eval_task_utils
        raise RuntimeError(f"{lm_eval_task_utils.__file__} lost its {marker!r} line")
    filled = source.replace(marker, f"PROMPT_SUFFIX: str | None = {STUDENT_PROMPT_SUFFIX!r}")
    (directory / "utils.py").write_text(filled)
    for bench in benchmarks:
        local = (data_files or {}).get(bench.name)
        if local is not None and not Path(local).is_file():
            raise FileNotFoundError(f"local data for {bench.name}: {str(local)!r} does not exist")
        text = _task_yaml(bench, samples[bench.name], None if local is None else str(Path(local).resolve()))
        (directory / f"{bench.task}.yaml").write_text(text)
    return directory


# -- the command --------------------------------------------------------------------------------------------------
def gen_kwargs(sampling: SamplingSettings, backend: Backend) -> dict[str, Any]:
    """lm-eval ``--gen_kwargs``: the sampling settings the backend takes, under lm-eval's names (``max_gen_toks``;
    ``do_sample`` must be true or lm-eval decodes greedily whatever the temperature)."""
    out: dict[str, Any] = {"do_sample": sampling.temperature > 0, "temperature": sampling.temperature,
                           "top_p": sampling.top_p, "max_gen_toks": sampling.max_new_tokens}
    if sampling.top_k > 0:
        out["top_k"] = sampling.top_k
    if sampling.presence_penalty != 0 and "presence_penalty" in backend.honours:
        out["presence_penalty"] = sampling.presence_penalty
    return out


def _typed(value: Any) -> Any:
    """A ``--model-args`` string as the JSON value lm-eval would parse from ``key=value`` (bool, int, float, text)."""
    if not isinstance(value, str):
        return value
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def build_command(
    python: str,
    benchmark: TextBenchmark,
    model_path: str,
    backend: Backend,
    sampling: SamplingSettings,
    output_path: str | Path,
    include_path: str | Path,
    batch_size: int | str = "auto",
    limit: int | None = None,
    model_args: Mapping[str, Any] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    device: str | None = None,
) -> list[str]:
    """``<python> -m lm_eval run ...`` for one text benchmark (argv list). Model and generation arguments go as
    JSON (lm-eval 0.4.13 parses a JSON object for both), so values keep their types and may hold commas.
    ``device`` is lm-eval's ``--device`` (the hf backend's; vLLM ignores it)."""
    args: dict[str, Any] = {backend.model_key: model_path, **dict(backend.default_model_args)}
    if backend.name == "vllm":
        args["max_gen_toks"] = sampling.max_new_tokens  # the model's default (256) when a request names none
    template = dict(chat_template_kwargs or {})
    if "enable_thinking" in template:  # lm-eval's own argument for Qwen3's switch (vllm and hf)
        args["enable_thinking"] = bool(template.pop("enable_thinking"))
    if template:
        args["chat_template_args"] = template
    args.update(model_args or {})
    args = {key: value if key == backend.model_key else _typed(value) for key, value in args.items()}
    command = [
        python, "-m", "lm_eval", "run",
        "--model", backend.lmms_model,
        "--model_args", json.dumps(args),
        "--tasks", benchmark.task,
        "--include_path", str(include_path),
        "--apply_chat_template",
        "--batch_size", str(batch_size),
        "--gen_kwargs", json.dumps(gen_kwargs(sampling, backend)),
        "--output_path", str(output_path),
        "--log_samples",
    ]
    if device is not None:
        command += ["--device", device]
    if limit is not None:
        command += ["--limit", str(limit)]
    return command


def find_python(explicit: str | None) -> str:
    """The lm-eval interpreter: ``explicit`` (``--lm-eval-python``), else ``$CEPO_LM_EVAL_PYTHON``; it must exist.
    Raises ``ValueError`` (unset) or ``FileNotFoundError`` naming the option and the setup line."""
    return find_interpreter(explicit, "--lm-eval-python", PYTHON_ENV, "lm-eval", SETUP_LINE,
                            purpose=" for the text benchmarks")


def lm_eval_version(python: str) -> str:
    """The lm-eval version installed for ``python``; ``ValueError`` (naming the setup line) when it has none."""
    return installed_version(python, "lm-eval", "lm_eval", SETUP_LINE)


class LmEvalFailed(RuntimeError):
    """lm-eval exited non-zero or wrote no result for its task; the message names the benchmark and the log."""


# -- result files -------------------------------------------------------------------------------------------------
def is_results_file(data: Any) -> bool:
    """Whether parsed JSON is an lm-eval result file holding one of cepo's text tasks."""
    tasks = {b.task for b in TEXT_BENCHMARKS.values()}
    return isinstance(data, dict) and isinstance(data.get("results"), dict) and bool(tasks & set(data["results"]))


def find_results_file(output_path: str | Path, task: str | None = None) -> Path | None:
    """The newest lm-eval ``results_*.json`` under ``output_path`` (nested in a folder per model), optionally the
    newest one holding ``task``."""
    files = sorted(Path(output_path).rglob("results_*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in files:
        if task is None:
            return path
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and task in (data.get("results") or {}):
            return path
    return None


def read_results_file(path: str | Path) -> dict[str, Any]:
    """A parsed lm-eval result file; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: not an lm-eval result file (no 'results')")
    return data


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def samples_in_file(data: Mapping[str, Any], benchmark: TextBenchmark) -> int | None:
    """k of ``benchmark``'s task in a parsed result file (its config's ``repeats``)."""
    config = (data.get("configs") or {}).get(benchmark.task) or {}
    k = config.get("repeats") if isinstance(config, Mapping) else None
    return k if isinstance(k, int) and not isinstance(k, bool) else None


def score_from_results(data: Mapping[str, Any], benchmark: TextBenchmark, where: str) -> BenchmarkScore:
    """avg@k (percent), its standard error and the problem count of ``benchmark`` from a parsed lm-eval result
    file; pass@k and k go to the score's extras."""
    results = data.get("results")
    if not isinstance(results, Mapping):
        raise ValueError(f"{where}: not an lm-eval result file (no 'results')")
    task = results.get(benchmark.task)
    if not isinstance(task, Mapping):
        raise ValueError(f"{where}: no results for lm-eval task {benchmark.task!r} (tasks: {sorted(results)})")
    key = f"{METRIC},{FILTER}"
    value = _number(task.get(key))
    if value is None:
        metrics = sorted(k for k in task if "," in k and "_stderr" not in k)
        raise ValueError(f"{where}: task {benchmark.task!r} has no numeric {key!r} (metrics: {metrics}); was it "
                         "written by cepo eval's task folder?")
    n_samples = (data.get("n-samples") or {}).get(benchmark.task) or {}
    n = n_samples.get("effective") if isinstance(n_samples, Mapping) else None
    stderr = _number(task.get(f"{METRIC}_stderr,{FILTER}"))
    k = samples_in_file(data, benchmark)
    extra: dict[str, Any] = {"samples_per_problem": k}
    pass_at_k = _number(task.get(f"pass_at_k,{FILTER}"))
    if pass_at_k is not None:
        extra["pass_at_k"] = 100.0 * pass_at_k
    gen = (data.get("config") or {}).get("gen_kwargs")
    if isinstance(gen, Mapping) and gen:
        extra["gen_kwargs"] = dict(gen)
    elif isinstance(gen, str) and gen:
        extra["gen_kwargs"] = gen
    return BenchmarkScore(
        accuracy=100.0 * value,
        stderr=None if stderr is None else 100.0 * stderr,
        n=n if isinstance(n, int) else None,
        task=benchmark.task,
        metric=f"avg@{k}" if k else METRIC,
        stderr_source="lm-eval" if stderr is not None else None,
        extra={k_: v for k_, v in extra.items() if v is not None},
    )


def scores_from_file(path: str | Path) -> dict[str, BenchmarkScore]:
    """Every text benchmark whose task is in the lm-eval result file ``path``."""
    data = read_results_file(path)
    return {b.name: score_from_results(data, b, str(path)) for b in TEXT_BENCHMARKS.values()
            if b.task in data["results"]}
