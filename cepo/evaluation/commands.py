"""The ``cepo eval``, ``cepo report``, ``cepo credit-map`` and ``cepo plot`` subcommands (wired into ``cepo.cli``).

They follow ``cepo.cli``'s conventions: bad input is one line on stderr naming the thing and the fix with exit code
2 (``ValueError`` / ``FileNotFoundError`` reach ``cepo.cli.main``), a failure exits 1, Ctrl-C exits 130 with a line
saying what is kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cepo.evaluation.benchmarks import PAPER_SAMPLING, SamplingSettings

TRAINING_SAMPLING = SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, presence_penalty=0.0, max_new_tokens=2048)
"""``cepo credit-map --sample``: a training rollout (temperature 1.0, no filters, the paper's 2048-token limit)."""

SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "presence_penalty", "max_new_tokens")


def _add_sampling(parser: argparse.ArgumentParser, defaults: SamplingSettings, what: str) -> None:
    group = parser.add_argument_group(f"sampling (defaults: {what})")
    group.add_argument("--temperature", type=float, help=f"default {defaults.temperature} (0 = greedy)")
    group.add_argument("--top-p", type=float, help=f"default {defaults.top_p}")
    group.add_argument("--top-k", type=int, help=f"default {defaults.top_k} (0 = off)")
    group.add_argument("--presence-penalty", type=float, help=f"default {defaults.presence_penalty} (0 = off)")
    group.add_argument("--max-new-tokens", type=int, help=f"default {defaults.max_new_tokens}")


def _sampling(ns: argparse.Namespace, defaults: SamplingSettings) -> SamplingSettings:
    return defaults.with_changes(**{k: getattr(ns, k) for k in SAMPLING_FLAGS})


# -- cepo eval --------------------------------------------------------------------------------------------------
def _eval(ns: argparse.Namespace) -> int:
    from cepo.evaluation.benchmarks import is_text_selection, resolve_benchmarks, resolve_text_benchmarks
    from cepo.evaluation.lm_eval import LmEvalFailed
    from cepo.evaluation.lmms import LmmsEvalFailed, parse_model_args
    from cepo.evaluation.results import table2_markdown

    sampling = _sampling(ns, PAPER_SAMPLING)
    if ns.batch_size is not None and ns.batch_size <= 0:
        raise ValueError(f"--batch-size must be positive, got {ns.batch_size}")
    if ns.limit is not None and ns.limit <= 0:
        raise ValueError(f"--limit must be positive, got {ns.limit}")
    if ns.samples is not None and ns.samples <= 0:
        raise ValueError(f"--samples must be a positive number of samples per problem, got {ns.samples}")
    for option, value, default in (("--name", ns.name, "the --local file's stem"),
                                   ("--label", ns.label, "the run's method, or Base")):
        if value is not None and not value.strip():
            raise ValueError(f"{option} is empty; give one, or leave {option} out (default: {default})")
    if ns.name is not None and not ns.local:
        raise ValueError("--name names the --local file's benchmark in eval.json; the benchmarks of --benchmarks keep "
                         "their own names: leave --name out")
    if ns.local:  # options of the external evaluators, which --local does not run: refused, not ignored
        for option, given in (("--dry-run", ns.dry_run), ("--model-args", ns.model_args),
                              ("--lmms-eval-python", ns.lmms_eval_python)):
            if given:
                raise ValueError(f"{option} is for the benchmarks that lmms-eval / lm-eval run; --local generates and "
                                 f"grades with cepo itself: leave {option} out")
    if ns.seed is not None and not ns.local:
        raise ValueError("--seed is the sampling seed of --local; lmms-eval and lm-eval sample with their own seeds: "
                         "leave --seed out")
    text = not ns.local and is_text_selection(ns.benchmarks)
    if not ns.local and not text:
        for option, given in (("--no-thinking", ns.no_thinking), ("--device", ns.device)):
            if given:
                raise ValueError(f"{option} applies to --local and the text benchmarks (lm-eval); lmms-eval runs the "
                                 f"vision benchmarks with its own settings: leave {option} out")
    if ns.samples is not None and not ns.local and not text:
        raise ValueError("--samples applies to the text benchmarks (--benchmarks math500,aime24,aime25 or text) and "
                         "to --local; the vision benchmarks take one sample per question, as the paper")
    if ns.lm_eval_python and not text:
        raise ValueError("--lm-eval-python is for the text benchmarks (--benchmarks math500,aime24,aime25 or text)")
    chat_template_kwargs = {"enable_thinking": False} if ns.no_thinking else None
    try:
        if ns.local:
            from cepo.evaluation.local import evaluate_local

            if ns.benchmarks:
                raise ValueError("--benchmarks and --local exclude each other (--local evaluates the given file)")
            result, path = evaluate_local(
                ns.model, ns.local, ns.output_dir, sampling, overwrite=ns.overwrite, base=ns.base,
                backend=ns.backend or "auto", name=ns.name,
                label=ns.label, limit=ns.limit, batch_size=ns.batch_size or 8,
                seed=ns.seed if ns.seed is not None else 0, device=ns.device,
                chat_template_kwargs=chat_template_kwargs, samples=ns.samples or 1,
            )
        elif text:
            from cepo.evaluation.runner import evaluate_lm_eval

            backend = ns.backend or "vllm"
            planned_text = evaluate_lm_eval(
                ns.model, resolve_text_benchmarks(ns.benchmarks), sampling, samples=ns.samples, backend=backend,
                python=ns.lm_eval_python, base=ns.base, output_dir=ns.output_dir, label=ns.label,
                batch_size=ns.batch_size or ("auto" if backend == "vllm" else 8), limit=ns.limit,
                model_args=parse_model_args(ns.model_args), chat_template_kwargs=chat_template_kwargs,
                device=ns.device, dry_run=ns.dry_run, overwrite=ns.overwrite,
            )
            if isinstance(planned_text, list):
                import shlex

                for text_run in planned_text:
                    print(shlex.join(text_run.command))
                return 0
            result, path = planned_text
        else:
            from cepo.evaluation.runner import evaluate_lmms

            benchmarks = resolve_benchmarks(ns.benchmarks)
            planned = evaluate_lmms(
                ns.model, benchmarks, sampling, backend=ns.backend or "vllm", python=ns.lmms_eval_python,
                base=ns.base, output_dir=ns.output_dir, label=ns.label, batch_size=ns.batch_size or 64,
                limit=ns.limit, model_args=parse_model_args(ns.model_args), dry_run=ns.dry_run,
                overwrite=ns.overwrite,
            )
            if isinstance(planned, list):
                import shlex

                for run in planned:
                    print(shlex.join(run.command))
                return 0
            result, path = planned
    except (LmmsEvalFailed, LmEvalFailed) as err:
        print(f"cepo eval: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cepo eval: interrupted; benchmarks already finished are kept in the output directory and are not run "
              "again when the same command is repeated", file=sys.stderr)
        return 130
    print(table2_markdown([result]), end="")
    print(f"results: {path}")
    return 0


def add_eval_parser(sub: Any) -> None:
    from cepo.evaluation.benchmarks import BENCHMARKS, TEXT_BENCHMARKS, TEXT_GROUP
    from cepo.evaluation.lm_eval import BACKENDS as TEXT_BACKENDS
    from cepo.evaluation.lm_eval import PYTHON_ENV as TEXT_PYTHON_ENV
    from cepo.evaluation.lmms import BACKENDS, PYTHON_ENV

    p = sub.add_parser(
        "eval", help="the paper's five benchmarks through lmms-eval, the text benchmarks (MATH-500, AIME) through "
                     "lm-eval (separate programs), or --local DATA",
        description="Evaluate a model on the paper's benchmarks with lmms-eval run as a separate program "
                    f"(--lmms-eval-python or ${PYTHON_ENV}), on MATH-500 / AIME 2024 / AIME 2025 with "
                    f"lm-evaluation-harness (--benchmarks text; --lm-eval-python or ${TEXT_PYTHON_ENV}; avg@k over "
                    "--samples k), or on a local problem/image/answer file with cepo's own verifier (--local); "
                    "docs/evaluation.md.",
    )
    p.add_argument("model", help="hub id, merged checkpoint, LoRA adapter dir (TRL final/ or checkpoint-*, verl "
                                 "lora_adapter), or a TRL run directory")
    p.add_argument("--base", help="base model of a LoRA adapter (default: its adapter_config.json)")
    p.add_argument("--benchmarks", help=f"comma-separated, default the five vision ones: {','.join(BENCHMARKS)}; "
                                        f"or text ones (lm-eval): {','.join(TEXT_BENCHMARKS)}, or '{TEXT_GROUP}'")
    p.add_argument("--backend", help=f"lmms-eval: {', '.join(BACKENDS)} (default vllm); text benchmarks (lm-eval): "
                                     f"{', '.join(TEXT_BACKENDS)} (default vllm); --local: hf or vllm "
                                     "(default: vllm when installed with a GPU, else hf)")
    p.add_argument("--lmms-eval-python", help=f"python of the lmms-eval virtualenv (default ${PYTHON_ENV})")
    p.add_argument("--lm-eval-python", help=f"python of the lm-eval virtualenv, for the text benchmarks (default "
                                            f"${TEXT_PYTHON_ENV})")
    p.add_argument("--samples", type=int, metavar="K",
                   help="samples per problem; the score is avg@K (mean over problems of the fraction of K correct) "
                        "± its standard error. Text benchmarks: default " + ", ".join(
                            f"{b.name} {b.default_samples}" for b in TEXT_BENCHMARKS.values()) + "; --local: 1")
    p.add_argument("--output-dir", help="default <run>/eval for a TRL run's model, else eval/<model name> (--local: "
                                        "their local-<data name>/ subfolder)")
    p.add_argument("--label", help="row label in cepo report (default: the run's method, or Base)")
    p.add_argument("--batch-size", type=int, help="lmms-eval --batch_size (default 64); lm-eval: default auto "
                                                  "(vllm) or 8 (hf); --local: default 8")
    p.add_argument("--limit", type=int, help="only the first N questions of each benchmark (for a quick check)")
    p.add_argument("--model-args", help="extra lmms-eval / lm-eval --model_args, e.g. tensor_parallel_size=2,"
                                        "gpu_memory_utilization=0.9")
    p.add_argument("--dry-run", action="store_true", help="print the lmms-eval / lm-eval commands and exit")
    p.add_argument("--overwrite", action="store_true", help="run benchmarks again whose results are already there "
                                                            "(--local: replace the results in the output folder)")
    local = p.add_argument_group("local evaluation")
    local.add_argument("--local", metavar="DATA", help="a .parquet/.json/.jsonl/.arrow file with problem (or "
                                                       "prompt), optional image(s) and answer")
    local.add_argument("--name", help="benchmark name in eval.json (default: the file's stem)")
    local.add_argument("--seed", type=int, default=None, help="sampling seed of --local (default 0)")
    local.add_argument("--no-thinking", action="store_true",
                       help="render the prompts with enable_thinking=false (Qwen3's switch, as configs/text/ trains); "
                            "also for the text benchmarks through lm-eval")
    local.add_argument("--device", help="default cuda when available, else cpu (also lm-eval's hf backend)")
    _add_sampling(p, PAPER_SAMPLING, "the paper's: 1.0 / 1.0 / 40 / 2.0 / 32000")
    p.set_defaults(func=_eval)


# -- cepo report ------------------------------------------------------------------------------------------------
def _report(ns: argparse.Namespace) -> int:
    from cepo.evaluation.report import build_report

    labels = [x.strip() for x in ns.labels.split(",")] if ns.labels else None
    table = build_report(ns.inputs, labels)
    if ns.output:
        Path(ns.output).parent.mkdir(parents=True, exist_ok=True)
        Path(ns.output).write_text(table)
    print(table, end="")
    return 0


def add_report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="evaluations side by side in Table 2's layout (Markdown)")
    p.add_argument("inputs", nargs="+", metavar="RUN_OR_JSON",
                   help="eval.json, an lmms-eval *_results.json, or a directory holding them (one row each)")
    p.add_argument("--labels", help="comma-separated row labels, one per input")
    p.add_argument("--output", help="also write the table to this file")
    p.set_defaults(func=_report)


# -- cepo credit-map --------------------------------------------------------------------------------------------
def _credit_map(ns: argparse.Namespace) -> int:
    try:
        return _credit_map_run(ns)
    except KeyboardInterrupt:
        print("cepo credit-map: interrupted before the credit map was complete", file=sys.stderr)
        return 130


def _credit_map_run(ns: argparse.Namespace) -> int:
    import torch
    from transformers import AutoConfig

    from cepo.analysis.credit_map import compute_credit_map, write_outputs
    from cepo.data import open_image, student_prompt
    from cepo.evaluation.generation import hf_generate, tokenizer_of
    from cepo.evaluation.models import context_length, load_model, load_processing_class, resolve_model
    from cepo.rewards import compute_score
    from cepo.teacher import DEFAULT_TEACHER_TEMPLATE

    sources = [ns.response is not None, ns.response_file is not None, ns.sample]
    if sum(sources) != 1:
        raise ValueError("give exactly one of --response TEXT, --response-file PATH, --sample")
    if not ns.problem.strip():
        raise ValueError("--problem is empty")
    image = None
    if ns.image:
        if not Path(ns.image).expanduser().is_file():
            raise FileNotFoundError(f"--image {ns.image!r} does not exist")
        try:
            image = open_image(str(Path(ns.image).expanduser())).convert("RGB")
        except ValueError as err:
            raise ValueError(f"--image {ns.image!r}: {err}") from None
    response_text = ns.response
    if ns.response_file:
        if not Path(ns.response_file).is_file():
            raise FileNotFoundError(f"--response-file {ns.response_file!r} does not exist")
        response_text = Path(ns.response_file).read_text()
    source = resolve_model(ns.model, ns.base, option="--model")
    processing_class = load_processing_class(source)  # cheap checks before the weights load
    if image is not None and getattr(processing_class, "image_processor", None) is None:
        raise ValueError(f"--image given but {ns.model!r} is a text-only model")
    tokenizer = tokenizer_of(processing_class)
    context = context_length(AutoConfig.from_pretrained(source.base if source.is_adapter else source.path))
    if response_text is not None:
        token_ids = tokenizer(response_text, add_special_tokens=False)["input_ids"]
        if context is not None and len(token_ids) >= context:
            raise ValueError(f"the response is {len(token_ids)} tokens, longer than the model's context of {context}; "
                             "shorten the response")
    device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processing_class = load_model(source, device=device)
    text = ns.problem if ns.raw_prompt else student_prompt(ns.problem)
    content: Any = [{"type": "image"}, {"type": "text", "text": text}] if image is not None else text
    messages = [{"role": "user", "content": content}]
    images = [image] if image is not None else []
    if ns.sample:
        generated = hf_generate(model, processing_class, [messages], [images], _sampling(ns, TRAINING_SAMPLING),
                                context=context, seed=ns.seed, batch_size=1)[0]
        token_ids, response_text = generated.token_ids, generated.text
    correct = compute_score(response_text, ns.answer).accuracy == 1.0
    sign = {"auto": 1 if correct else -1, "pos": 1, "neg": -1}[ns.advantage_sign]
    cmap = compute_credit_map(
        model, processing_class, messages, token_ids, ns.answer, ns.wrong_answer, images=images,
        advantage_sign=sign, eps_w=ns.eps_w, template=ns.teacher_template or DEFAULT_TEACHER_TEMPLATE,
        teacher_sees_image=not ns.no_teacher_image, temperature=ns.logprob_temperature, context=context,
    )
    cmap.meta = {"model": source.given, "problem": ns.problem, "image": ns.image, "answer": ns.answer,
                 "wrong_answer": ns.wrong_answer, "response": response_text, "correct": correct}
    paths = write_outputs(cmap, ns.output_dir, title=ns.title)
    print(f"{len(token_ids)} response tokens; clip rate RLSD {100 * cmap.clip_rate['RLSD']:.1f}%, "
          f"CEPO {100 * cmap.clip_rate['CEPO']:.1f}% (eps_w {ns.eps_w:g}, sign(A) {'+' if sign > 0 else '-'})")
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def add_credit_map_parser(sub: Any) -> None:
    p = sub.add_parser("credit-map", help="per-token RLSD vs CEPO weights on one response (paper Fig. 5): "
                                          "JSON, HTML, PNG")
    p.add_argument("--model", required=True, help="hub id, checkpoint or LoRA adapter dir (CPU works for small "
                                                  "models)")
    p.add_argument("--base", help="base model of a LoRA adapter (default: its adapter_config.json)")
    p.add_argument("--problem", required=True, help="the problem text (the Appendix B instruction is appended, as in "
                                                    "training, unless --raw-prompt)")
    p.add_argument("--image", help="the problem's figure (optional)")
    p.add_argument("--answer", required=True, help="the ground-truth answer (r+)")
    p.add_argument("--wrong-answer", required=True, help="a wrong final answer (r-)")
    p.add_argument("--response", help="the response text (tokenized as is)")
    p.add_argument("--response-file", help="read the response text from this file")
    p.add_argument("--sample", action="store_true", help="sample a response now (a training rollout's settings)")
    p.add_argument("--raw-prompt", action="store_true", help="use --problem as the whole user prompt")
    p.add_argument("--eps-w", type=float, default=0.5, help="weight clip half-width (default 0.5, the paper's)")
    p.add_argument("--advantage-sign", choices=["auto", "pos", "neg"], default="auto",
                   help="sign(A): auto = + when the verifier grades the response correct, else -")
    p.add_argument("--teacher-template", help="Jinja teacher template (default: the paper's Appendix B)")
    p.add_argument("--no-teacher-image", action="store_true", help="text-only teacher (the authors' parity setting)")
    p.add_argument("--logprob-temperature", type=float, default=1.0, help="temperature of the log-prob passes, as "
                                                                          "the rollout temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="default cuda when available, else cpu")
    p.add_argument("--output-dir", default="credit-map", help="where credit_map.{json,html,png} go (default "
                                                              "credit-map/)")
    p.add_argument("--title", help="a heading for the HTML and PNG")
    _add_sampling(p, TRAINING_SAMPLING, "a training rollout's: 1.0 / 1.0 / 0 / 0 / 2048; with --sample")
    p.set_defaults(func=_credit_map)


# -- cepo plot --------------------------------------------------------------------------------------------------
def _plot(ns: argparse.Namespace) -> int:
    from cepo.analysis.plots import load_run, plot_runs
    from cepo.output_paths import check_output_file

    check_output_file(ns.output, "--output", ".png")
    labels = [x.strip() for x in ns.labels.split(",")] if ns.labels else [None] * len(ns.runs)
    if len(labels) != len(ns.runs):
        raise ValueError(f"--labels has {len(labels)} names for {len(ns.runs)} runs; give one per run")
    runs = [load_run(path, label) for path, label in zip(ns.runs, labels, strict=True)]
    panels = [x.strip() for x in ns.panels.split(",")] if ns.panels else None
    path, drawn = plot_runs(runs, ns.output, panels=panels, title=ns.title)
    for run in runs:
        print(f"{run.label}: {len(run.steps)} steps from {run.path} ({run.source})")
    print(f"panels: {', '.join(drawn)}; written to {path}")
    return 0


def add_plot_parser(sub: Any) -> None:
    from cepo.analysis.plots import PANELS

    p = sub.add_parser("plot", help="training curves of runs, overlaid (reward, accuracy, lambda, delta signs, "
                                    "clip rate, teacher time): PNG")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="TRL run dir (metrics.jsonl), verl file-logger .jsonl, or a saved verl console log")
    p.add_argument("--labels", help="comma-separated legend labels, one per run (default: directory names)")
    p.add_argument("--output", default="curves.png", help="PNG path (default curves.png)")
    p.add_argument("--panels", help=f"comma-separated subset of {','.join(PANELS)}")
    p.add_argument("--title")
    p.set_defaults(func=_plot)


def add_parsers(sub: Any) -> None:
    """Add ``eval``, ``report``, ``credit-map`` and ``plot`` to ``cepo``'s subcommands."""
    add_eval_parser(sub)
    add_report_parser(sub)
    add_credit_map_parser(sub)
    add_plot_parser(sub)
