"""``cepo eval --local DATA``: accuracy on any problem/image/answer file with our own verifier, on CPU or GPU.

The same numbers a training run's own validation would give: the rows get the student prompt the trainer uses
(``cepo.data.student_prompt``, the paper's Appendix B instruction, unless the file already holds chat messages),
the image first in the user turn, and every response is graded by ``cepo.rewards.compute_score`` (mathruler or
math-verify on the last ``\\boxed{}``). Generation is Hugging Face ``generate`` (any device) or vLLM
(``--backend vllm``, a GPU with vLLM installed), both with all of the paper's sampling settings
(``cepo.evaluation.generation``).

Accepted files: everything ``cepo.data.read_data_file`` reads (``.parquet``, ``.json``/``.jsonl``, ``.arrow``, a
``save_to_disk`` directory) with

* a prompt: ``problem`` or ``question`` (text; the Appendix B instruction is appended), or ``prompt`` (chat
  messages as ``scripts/prepare_geo3k.py`` writes them; ``<image>`` placeholders removed; or text);
* the answer: ``answer``, or ``reward_model.ground_truth`` (verl's layout); one per row (``cepo.data.answers``);
* optionally images: ``images`` (a list per row) or ``image``; each must open (``cepo.data.images``).

``--samples k`` draws k responses per problem and reports avg@k (:func:`avg_at_k`): the mean over problems of the
fraction of the k responses graded right, with its standard error over problems, the standard deviation of the
per-problem fractions over sqrt(n) (for k = 1 this is the binomial ``sqrt(p (1 - p) / n)``).

Writes ``<output-dir>/eval.json`` (``cepo.evaluation.results``) and ``<output-dir>/samples.jsonl`` (one row per
response, problem by problem: index, sample (0..k-1), answer, response, extracted answer, accuracy, format, reward).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cepo.evaluation.benchmarks import SamplingSettings
from cepo.evaluation.results import BenchmarkScore, EvalResult

PROMPT_COLUMNS = ("prompt", "problem", "question")
IMAGE_COLUMNS = ("images", "image")
PLACEHOLDER = "<image>"


@dataclass
class Example:
    """One problem: the conversation the student sees, its images and the ground-truth answer."""

    index: int
    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)
    answer: str = ""


def _answer_value(row: dict[str, Any]) -> Any:
    value = row.get("answer")
    if value is not None and not (isinstance(value, str) and not value.strip()):
        return value
    reward_model = row.get("reward_model")
    return reward_model.get("ground_truth") if isinstance(reward_model, dict) else value


def _with_images(messages: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Image items first in the first user turn (as TRL's ``prepare_multimodal_messages`` places them)."""
    if not count:
        return messages
    out = [dict(m) for m in messages]
    for message in out:
        if message.get("role") == "user":
            content = message.get("content")
            items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or [])
            message["content"] = [{"type": "image"} for _ in range(count)] + items
            return out
    raise ValueError("the prompt has no user turn to put the image in")


def _messages(value: Any, column: str, where: str) -> list[dict[str, Any]]:
    from cepo.data import student_prompt

    if isinstance(value, str):  # a problem: the student prompt of training (as the TRL data loader builds it)
        return [{"role": "user", "content": student_prompt(value)}]
    if isinstance(value, list | tuple) and value and all(isinstance(m, dict) and "role" in m for m in value):
        out = []
        for m in value:
            content = m.get("content")
            if isinstance(content, str):
                content = content.replace(PLACEHOLDER, "").strip()
            out.append({"role": m["role"], "content": content})
        return out
    raise ValueError(f"{where}: column {column!r} is neither text nor a list of chat messages")


def load_examples(path: str | Path, limit: int | None = None) -> list[Example]:
    """The rows of ``path`` as :class:`Example` (module docstring), every answer and image checked first."""

    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()  # our own lines say what matters
    try:
        return _load_examples(path, limit)
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _load_examples(path: str | Path, limit: int | None) -> list[Example]:
    from cepo.data import answer_problems, answer_text, describe_bad_images, image_problems, open_image
    from cepo.data.answers import describe_answer_problems
    from cepo.data.files import read_data_file

    dataset = read_data_file(path, label="--local data")
    columns = dataset.column_names
    prompt_column = next((c for c in PROMPT_COLUMNS if c in columns), None)
    if prompt_column is None:
        raise ValueError(f"--local data {str(path)!r} has none of the prompt columns {PROMPT_COLUMNS} "
                         f"(columns: {columns})")
    if "answer" not in columns and "reward_model" not in columns:
        raise ValueError(f"--local data {str(path)!r} has no 'answer' (or verl's reward_model) column "
                         f"(columns: {columns})")
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    answers = [_answer_value(r) for r in dataset.select_columns(
        [c for c in ("answer", "reward_model") if c in columns])]
    problems = answer_problems(answers)
    if problems:
        raise ValueError(f"--local data {str(path)!r}: {len(problems)} row(s) without a usable answer: "
                         f"{describe_answer_problems(problems)}; fix or remove them")
    image_column = next((c for c in IMAGE_COLUMNS if c in columns), None)
    if image_column is not None:
        bad = image_problems(dataset, image_column)
        if bad:
            raise ValueError(f"--local data {str(path)!r}: image(s) that cannot be opened: {describe_bad_images(bad)}; "
                             "fix or remove those rows")
    import datasets

    if image_column is not None:  # read images raw (bytes/paths), open them ourselves
        feature = dataset.features[image_column]
        raw = (datasets.List(datasets.Image(decode=False)) if isinstance(feature, datasets.List | list)
               else datasets.Image(decode=False) if isinstance(feature, datasets.Image) else None)
        if raw is not None:
            dataset = dataset.cast_column(image_column, raw)
    examples = []
    for i in range(len(dataset)):
        row = dataset[i]
        where = f"--local data {str(path)!r} row {i}"
        value = row.get(image_column) if image_column else None
        values = [] if value is None else list(value) if isinstance(value, list | tuple) else [value]
        images = [open_image(v) for v in values]
        messages = _with_images(_messages(row[prompt_column], prompt_column, where), len(images))
        examples.append(Example(index=i, messages=messages, images=[im.convert("RGB") for im in images],
                                answer=answer_text(answers[i])))
    return examples


def avg_at_k(correct: Sequence[Sequence[float]]) -> tuple[float, float]:
    """avg@k over problems and its standard error, both as fractions: ``correct[i]`` holds the k grades (0/1) of
    problem ``i``. The mean of the per-problem fractions, and their (population) standard deviation over
    ``sqrt(n)``; for k = 1 this is the binomial ``sqrt(p (1 - p) / n)``. ``ValueError`` for no problems or a
    problem without grades."""
    if not correct:
        raise ValueError("avg@k needs at least one problem")
    if any(len(grades) == 0 for grades in correct):
        raise ValueError("every problem needs at least one graded sample")
    fractions = [sum(grades) / len(grades) for grades in correct]
    n = len(fractions)
    mean = sum(fractions) / n
    variance = sum((f - mean) ** 2 for f in fractions) / n
    return mean, math.sqrt(variance / n)


def local_output_dir(source: Any, data: str | Path, output_dir: str | Path | None, overwrite: bool) -> Path:
    """Where ``cepo eval --local`` writes (see :func:`evaluate_local`); ``ValueError`` for an unwritable folder or
    one holding results already, without ``overwrite``."""
    from cepo.evaluation.runner import default_output_dir
    from cepo.output_paths import check_output_dir

    if output_dir is None:
        out_dir = default_output_dir(source) / f"local-{Path(str(data)).stem}"
    else:
        out_dir = check_output_dir(output_dir, "--output-dir")
    check_output_dir(out_dir, "--output-dir")
    if (out_dir / "eval.json").is_file() and not overwrite:
        raise ValueError(f"{out_dir} already holds results (eval.json); replace them with --overwrite, or write "
                         "elsewhere with --output-dir <dir>")
    return out_dir


def evaluate_local(
    model: str,
    data: str | Path,
    output_dir: str | Path | None,
    sampling: SamplingSettings,
    *,
    overwrite: bool = False,
    base: str | None = None,
    backend: str = "auto",
    name: str | None = None,
    label: str | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: str | None = None,
    accuracy_weight: float = 0.9,
    format_weight: float = 0.1,
    echo: Callable[[str], None] | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
    samples: int = 1,
) -> tuple[EvalResult, Path]:
    """Generate ``samples`` responses per row (k; avg@k when k > 1), grade them, and write ``eval.json`` +
    ``samples.jsonl`` to ``output_dir`` (``None``: ``local-<data file stem>/`` in the model's default evaluation
    folder, ``<run>/eval`` for a TRL run's model, else ``eval/<model name>``;
    ``cepo.evaluation.runner.default_output_dir``). Results already there are replaced only with ``overwrite``; the
    folder is checked before the model loads.

    ``backend``: ``hf``, ``vllm`` or ``auto`` (vLLM when it is installed and a GPU is present, else HF).
    ``chat_template_kwargs``: extra chat-template variables for the prompts, e.g. ``{"enable_thinking": False}`` for
    a Qwen3 model trained with configs/text/ (``cepo eval --local --no-thinking``). Returns the result and the path
    of ``eval.json``.
    """
    import torch

    from cepo.evaluation.generation import hf_generate, vllm_available, vllm_generate
    from cepo.evaluation.models import context_length, load_model, merged_checkpoint, resolve_model
    from cepo.evaluation.results import default_label
    from cepo.rewards import compute_score, extract_answer

    say = echo or (lambda msg: print(msg, file=sys.stderr))
    if samples <= 0:
        raise ValueError(f"--samples must be a positive number of samples per problem, got {samples}")
    if samples > 1 and sampling.temperature == 0:
        raise ValueError(f"--temperature 0 (greedy) gives the same response {samples} times per problem; pass "
                         "--samples 1 for greedy decoding, or a temperature above 0")
    if backend not in ("auto", "hf", "vllm"):
        raise ValueError(f"--backend {backend!r} is not one of hf, vllm (with --local)")
    if backend == "vllm" and not vllm_available():
        raise ValueError("--backend vllm needs vLLM installed and a CUDA device; use --backend hf")
    chosen = ("vllm" if vllm_available() else "hf") if backend == "auto" else backend
    source = resolve_model(model, base)
    out_dir = local_output_dir(source, data, output_dir, overwrite)
    examples = load_examples(data, limit)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tic = time.perf_counter()
    problems = examples
    examples = [e for e in problems for _ in range(samples)]  # k copies of each problem, problem by problem
    if chosen == "hf":
        lm, processing_class = load_model(source, device=device)
        generated = hf_generate(lm, processing_class, [e.messages for e in examples], [e.images for e in examples],
                                sampling, context=context_length(lm), seed=seed, batch_size=batch_size, warn=say,
                                progress=echo is None, chat_template_kwargs=chat_template_kwargs)
    else:
        from cepo.evaluation.models import load_processing_class

        processing_class = load_processing_class(source)
        with merged_checkpoint(source, out_dir) as path:
            generated = vllm_generate(path, processing_class, [e.messages for e in examples],
                                      [e.images for e in examples], sampling, seed=seed,
                                      chat_template_kwargs=chat_template_kwargs)
    rows = []
    for i, (example, response) in enumerate(zip(examples, generated, strict=True)):
        score = compute_score(response.text, example.answer, accuracy_weight, format_weight)
        rows.append({"index": example.index, "sample": i % samples, "answer": example.answer,
                     "response": response.text, "extracted": extract_answer(response.text),
                     "accuracy": score.accuracy, "format": score.format, "reward": score.overall,
                     "response_tokens": len(response.token_ids)})
    n = len(problems)
    grades = [[r["accuracy"] for r in rows[i * samples:(i + 1) * samples]] for i in range(n)]
    accuracy, stderr = avg_at_k(grades)
    extra: dict[str, Any] = {"format_rate": 100.0 * sum(r["format"] for r in rows) / len(rows),
                             "mean_reward": sum(r["reward"] for r in rows) / len(rows), "data": str(data)}
    if samples > 1:
        extra["samples_per_problem"] = samples
        extra["pass_at_k"] = 100.0 * sum(max(g) for g in grades) / n
    bench = name or Path(str(data)).stem
    result = EvalResult(
        label=label or default_label(source.method(), source.given, source.kind),
        benchmarks={bench: BenchmarkScore(
            accuracy=100.0 * accuracy,
            stderr=100.0 * stderr,
            n=n,
            metric=("accuracy" if samples == 1 else f"avg@{samples}") + " (cepo.rewards.compute_score)",
            stderr_source="binomial" if samples == 1 else "over problems",
            extra=extra,
        )},
        model=source.given,
        method=source.method(),
        evaluator="local",
        backend=chosen,
        sampling=sampling.as_dict(),
        extra={"seed": seed, "seconds": round(time.perf_counter() - tic, 2)},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "samples.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return result, result.write(out_dir / "eval.json")
