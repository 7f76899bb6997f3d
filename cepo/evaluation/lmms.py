"""lmms-eval as a separate program: the command for one benchmark, running it, and reading its result file.

lmms-eval 0.7.3 cannot share an environment with verl (its ``latex2sympy2`` pins ``antlr4-python3-runtime==4.7.2``,
Hydra/OmegaConf need 4.9; it pins ``wandb==0.25.0``), so cepo never imports it: ``cepo eval`` runs
``<python> -m lmms_eval ...`` with the interpreter of a separate virtualenv (``--lmms-eval-python`` or the
``CEPO_LMMS_EVAL_PYTHON`` environment variable) and parses the ``*_results.json`` it writes. One-line setup
(:data:`SETUP_LINE`; vLLM 0.24.0 and transformers 5.9.0 are the versions verl 0.9.1 was tested with)::

    python3.11 -m venv ~/.venvs/lmms-eval && ~/.venvs/lmms-eval/bin/pip install lmms-eval==0.7.3 vllm==0.24.0 \\
        transformers==5.9.0

Backends (:data:`BACKENDS`), and which of the paper's sampling settings each one's lmms-eval 0.7.3 model class
forwards to generation (read from ``lmms_eval/models/chat/*.py`` and ``models/simple/*.py``):

* ``vllm`` (lmms-eval ``vllm``, the chat class): temperature, top_p, top_k, presence_penalty, max_new_tokens.
* ``qwen3_vl`` (Hugging Face ``generate``): temperature, top_p, top_k, max_new_tokens; no presence penalty.
* ``hf`` (lmms-eval ``huggingface``): temperature, top_p, max_new_tokens; no top_k, no presence penalty.

lmms-eval's result file (``EvaluationTracker.save_results_aggregated``): ``<output_path>/<model name sanitized>/
<date>_results.json`` with ``results[<task>]["<metric>,none"]``, ``"<metric>_stderr,none"`` (a number or ``"N/A"``:
only ``mean``-aggregated metrics get one), ``"<metric>_stderr_clt,none"``, ``"samples"`` (questions scored),
plus ``"n-samples"``, ``"configs"``, ``"config"`` (with the parsed ``gen_kwargs``) and ``"lmms_eval_version"`` (a
``branch@commit`` string, not the package version: :func:`lmms_eval_version` asks the interpreter instead).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cepo.evaluation.benchmarks import Benchmark, SamplingSettings
from cepo.evaluation.interpreter import find_interpreter, installed_version
from cepo.evaluation.results import BenchmarkScore, binomial_stderr

PYTHON_ENV = "CEPO_LMMS_EVAL_PYTHON"
SETUP_LINE = (
    "python3.11 -m venv ~/.venvs/lmms-eval && ~/.venvs/lmms-eval/bin/pip install lmms-eval==0.7.3 vllm==0.24.0 "
    "transformers==5.9.0"
)
FILTER = "none"
"""lmms-eval's default filter name: metric keys are ``"<metric>,none"``."""


@dataclass(frozen=True)
class Backend:
    """An lmms-eval model class: its name, the model-args key for the checkpoint, and the sampling settings its
    generation honours."""

    name: str
    lmms_model: str
    model_key: str
    honours: frozenset[str]
    default_model_args: tuple[tuple[str, str], ...] = ()


BACKENDS: dict[str, Backend] = {
    "vllm": Backend(
        "vllm", "vllm", "model",
        frozenset({"temperature", "top_p", "top_k", "presence_penalty", "max_new_tokens"}),
        # the authors' settings: room for the prompt and 32k new tokens, bf16
        (("max_model_len", "40000"), ("dtype", "bfloat16")),
    ),
    "qwen3_vl": Backend("qwen3_vl", "qwen3_vl", "pretrained",
                        frozenset({"temperature", "top_p", "top_k", "max_new_tokens"})),
    "hf": Backend("hf", "huggingface", "pretrained", frozenset({"temperature", "top_p", "max_new_tokens"})),
}


def ignored_settings(backend: Backend, sampling: SamplingSettings) -> list[str]:
    """The active sampling settings (``SamplingSettings.active``) that ``backend`` does not forward, as
    ``"name=value"``."""
    return [f"{k}={v}" for k, v in sampling.active().items() if k not in backend.honours]


def _kv(pairs: Mapping[str, Any]) -> str:
    for key, value in pairs.items():
        if "," in str(value) or "=" in str(key):
            raise ValueError(f"lmms-eval argument {key}={value!r} may not contain ',' (lmms-eval splits on it)")
    return ",".join(f"{k}={v}" for k, v in pairs.items())


def parse_model_args(text: str | None) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}`` (``--model-args``); a malformed item raises ``ValueError``."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-args item {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def build_command(
    python: str,
    benchmark: Benchmark,
    model_path: str,
    backend: Backend,
    sampling: SamplingSettings,
    output_path: str | Path,
    batch_size: int = 64,
    limit: int | None = None,
    model_args: Mapping[str, str] | None = None,
) -> list[str]:
    """``<python> -m lmms_eval ...`` for one benchmark (argv list).

    ``gen_kwargs`` carry every sampling setting under lmms-eval's names (``max_new_tokens``, never ``max_tokens``);
    they override the task YAML's ``generation_kwargs``. The vLLM backend also gets ``max_new_tokens`` as a model
    argument: it generates ``max(request, model setting)`` tokens, so the model setting (default 4096) must not
    exceed ours.
    """
    args: dict[str, Any] = {backend.model_key: model_path, **dict(backend.default_model_args)}
    if backend.name == "vllm":
        args["max_new_tokens"] = sampling.max_new_tokens
    args.update(model_args or {})
    gen = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "presence_penalty": sampling.presence_penalty,
        "max_new_tokens": sampling.max_new_tokens,
    }
    if sampling.top_k == 0:  # 0 = off: vLLM wants -1 (or nothing), HF treats 0 as off
        gen.pop("top_k")
    if sampling.presence_penalty == 0:
        gen.pop("presence_penalty")
    command = [
        python, "-m", "lmms_eval",
        "--model", backend.lmms_model,
        "--model_args", _kv(args),
        "--tasks", benchmark.task,
        "--batch_size", str(batch_size),
        "--gen_kwargs", _kv(gen),
        "--output_path", str(output_path),
        "--log_samples",
    ]
    if limit is not None:
        command += ["--limit", str(limit)]
    return command


def find_python(explicit: str | None) -> str:
    """The lmms-eval interpreter: ``explicit`` (``--lmms-eval-python``), else ``$CEPO_LMMS_EVAL_PYTHON``; it must
    exist. Raises ``ValueError`` (unset) or ``FileNotFoundError`` naming the option and the setup line."""
    return find_interpreter(explicit, "--lmms-eval-python", PYTHON_ENV, "lmms-eval", SETUP_LINE)


def lmms_eval_version(python: str) -> str:
    """The lmms-eval version installed for ``python``; ``ValueError`` (naming the setup line) when it has none."""
    return installed_version(python, "lmms-eval", "lmms_eval", SETUP_LINE)


class LmmsEvalFailed(RuntimeError):
    """lmms-eval exited non-zero or wrote no result for its task; the message names the benchmark and the log."""


def run_command(command: Sequence[str], log_path: Path, echo: bool = True) -> int:
    """Run ``command``, copying its output to ``log_path`` (and to stderr when ``echo``); return its exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # cepo's environment must not leak into lmms-eval's
    with log_path.open("w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                bufsize=1)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                if echo:
                    sys.stderr.write(line)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(timeout=60)
            raise
        return proc.wait()


# -- result files ----------------------------------------------------------------------------------------------
def find_results_file(output_path: str | Path) -> Path | None:
    """The newest ``*_results.json`` under ``output_path`` (lmms-eval nests it in a folder per model)."""
    files = sorted(Path(output_path).rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def score_from_results(data: Mapping[str, Any], benchmark: Benchmark, where: str) -> BenchmarkScore:
    """The benchmark's accuracy (percent), standard error and question count from a parsed lmms-eval result file.

    The standard error is lmms-eval's own when it computed one (``mean``-aggregated metrics), else its CLT one,
    else ``sqrt(p (1 - p) / n)`` from the accuracy and the number of questions scored (what the paper reports).
    """
    results = data.get("results")
    if not isinstance(results, Mapping):
        raise ValueError(f"{where}: not an lmms-eval result file (no 'results')")
    task = results.get(benchmark.task)
    if not isinstance(task, Mapping):
        raise ValueError(f"{where}: no results for lmms-eval task {benchmark.task!r} (tasks: {sorted(results)})")
    key = f"{benchmark.metric},{FILTER}"
    value = _number(task.get(key))
    if value is None:
        metrics = sorted(k for k in task if "," in k and "_stderr" not in k)
        raise ValueError(f"{where}: task {benchmark.task!r} has no numeric {key!r} (metrics: {metrics})")
    accuracy = value / benchmark.scale
    n = task.get("samples")
    if not isinstance(n, int):
        n_samples = (data.get("n-samples") or {}).get(benchmark.task) or {}
        n = n_samples.get("effective") if isinstance(n_samples, Mapping) else None
    stderr, source = _number(task.get(f"{benchmark.metric}_stderr,{FILTER}")), "lmms-eval"
    if stderr is None:
        stderr, source = _number(task.get(f"{benchmark.metric}_stderr_clt,{FILTER}")), "clt"
    if stderr is not None:
        stderr /= benchmark.scale
    elif isinstance(n, int) and n > 0:
        stderr, source = binomial_stderr(min(max(accuracy, 0.0), 1.0), n), "binomial"
    else:
        source = None
    gen = ((data.get("config") or {}).get("gen_kwargs")) or {}
    extra: dict[str, Any] = {}
    if isinstance(gen, Mapping) and gen:
        extra["gen_kwargs"] = dict(gen)
    return BenchmarkScore(
        accuracy=100.0 * accuracy,
        stderr=None if stderr is None else 100.0 * stderr,
        n=n if isinstance(n, int) else None,
        task=benchmark.task,
        metric=benchmark.metric,
        stderr_source=source,
        extra={k: v for k, v in extra.items() if v is not None},
    )


def read_results_file(path: str | Path) -> dict[str, Any]:
    """A parsed lmms-eval result file; ``ValueError`` naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not readable as JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: not an lmms-eval result file (no 'results')")
    return data


def scores_from_file(path: str | Path, benchmarks: Sequence[Benchmark]) -> dict[str, BenchmarkScore]:
    """Every benchmark of ``benchmarks`` whose task is in the lmms-eval result file ``path``."""
    data = read_results_file(path)
    return {b.name: score_from_results(data, b, str(path)) for b in benchmarks if b.task in data["results"]}


def check_gen_kwargs(data: Mapping[str, Any]) -> list[str]:
    """Warnings about a result file's recorded ``gen_kwargs``: a ``max_tokens`` key that lmms-eval ignored."""
    gen = (data.get("config") or {}).get("gen_kwargs") or {}
    notes = []
    if isinstance(gen, Mapping) and "max_tokens" in gen and "max_new_tokens" not in gen:
        notes.append(
            f"gen_kwargs has max_tokens={gen['max_tokens']} but no max_new_tokens: lmms-eval ignored it and used the "
            "task's own length limit"
        )
    return notes
