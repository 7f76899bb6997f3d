"""The GPU check: CEPO against GRPO on the TRL engine at Qwen3-VL-2B's size, then the overhead sizes, in one command.

Needs torch, transformers, peft, accelerate, trl (with datasets) and mathruler; no network, no vLLM, no weights.

Stage ``trl``: ``CEPOTrainer`` (the trainer ``cepo train`` runs on the TRL engine; only wrapped by
``overhead.timed_trainer_class`` to time its phases) in bf16 with gradient checkpointing and the paper's LoRA
(rank 16, alpha 32, language model only), on a Qwen3-VL built from Qwen3-VL-2B-Instruct's configuration
(``benchmarks/configs/qwen3vl_2b_config.json``) with random weights. Tokenizer and processor: the project's
offline Qwen-style tokenizer (``cepo.testing``; about 1.5k tokens, Qwen's special-token strings, the model keeps
the real 151,936-row vocabulary) and Qwen3-VL's image processing (patch 16, merge 2, 65,536-16,777,216 pixels).
The paper's lengths and batch: prompts of about 768 tokens including a 512x512 image (256 image tokens),
responses of 2048 tokens, G = 8, 4 prompts per rollout batch (32 sequences: one GPU's share of the paper's
32 x 8 on 8 GPUs) in 2 optimizer steps (ppo_mini_batch_size 16 of 32) of micro-batches of 4, as
``trainer_settings`` maps ``configs/paper_base.yaml`` (checked against ``cepo train``'s own mapping in the
tests). Every method trains on the same completions (``overhead.Replay``: half of each group right, half wrong,
so every row has an advantage and CEPO's teacher scores every row). ``--generation skip`` (default) does not
generate: the real job generates with vLLM, the same for every method, and HF ``generate`` of 2048 tokens would
take most of the budget; the completions are filler tokens of the full response length. ``--generation hf``
generates for real (forced to the full length). Each method: a fresh model, one warm-up rollout batch, then
``--rounds`` timed ones (2b: 2).

Stage ``overhead``: ``benchmarks/overhead.py --device cuda --dtype bfloat16`` per size (Qwen3-shaped decoders),
paper layout, one timed rollout batch, each size a subprocess with the remaining budget.

Every run is guarded: an out-of-memory error, any other error, or the end of the time budget is recorded for that
run and the check goes on. Writes ``gpu_check.json`` and ``gpu_check.md`` (the tables, naming the GPU) to
``--out``, and prints progress. Usage::

    python benchmarks/gpu_check.py --out runs/gpu_check                       # on a GPU, about 6 min
    python benchmarks/gpu_check.py --device cpu --size tiny --out /tmp/check  # tiny model on CPU (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
for _path in (str(BENCH_DIR), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # importing overhead.py must not re-exec this script
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # CPU threads must not spin while another process works

import torch  # noqa: E402

QWEN3VL_2B_CONFIG = BENCH_DIR / "configs" / "qwen3vl_2b_config.json"
#: Qwen3-VL-2B-Instruct's image processor pixel budget (preprocessor_config.json: shortest/longest edge).
QWEN3VL_MIN_PIXELS, QWEN3VL_MAX_PIXELS = 65_536, 16_777_216
LORA_RANK, LORA_ALPHA = 16, 32  # configs/paper_base.yaml
PAPER_LEARNING_RATE = {"cepo": 5e-6}  # configs/cepo.yaml; every other method: paper_base.yaml's 1e-6
GIB = 1024**3

#: Defaults per model size; the command line overrides any of them.
PRESETS: dict[str, dict[str, Any]] = {
    "2b": {"prompt_tokens": 768, "response_tokens": 2048, "group": 8, "prompts": 4, "micro_batch": 4,
           "image_size": 512, "rounds": 2, "overhead_sizes": ["M", "L", "XL", "2B"], "overhead_lengths": [512]},
    "tiny": {"prompt_tokens": 64, "response_tokens": 12, "group": 4, "prompts": 2, "micro_batch": 2,
             "image_size": 64, "rounds": 1, "overhead_sizes": ["S"], "overhead_lengths": [12]},
}


class BudgetExceeded(Exception):
    """The check's time budget ran out during a run."""


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`BudgetExceeded` in the main thread when the block runs longer than ``seconds``."""
    if seconds <= 1:
        raise BudgetExceeded("no time left in the budget")

    def expire(signum: int, frame: Any) -> None:
        raise BudgetExceeded(f"the time budget ran out ({seconds:.0f} s for this run)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _say(text: str) -> None:
    print(text, flush=True)


# -- model, processor, data -------------------------------------------------------------------------------------


def qwen3vl_2b_config(tokenizer: Any) -> Any:
    """Qwen3-VL-2B-Instruct's configuration with the special-token ids of ``tokenizer`` (the offline tokenizer
    numbers them after its own ~1.5k tokens, Qwen after 151,643); the vocabulary stays Qwen's 151,936 rows."""
    from transformers import Qwen3VLConfig

    from cepo.testing.tokenizer import ENDOFTEXT, IM_END, IMAGE_PAD, VIDEO_PAD, VISION_END, VISION_START

    raw = json.loads(QWEN3VL_2B_CONFIG.read_text())
    ids = tokenizer.convert_tokens_to_ids
    raw.update(image_token_id=ids(IMAGE_PAD), video_token_id=ids(VIDEO_PAD), vision_start_token_id=ids(VISION_START),
               vision_end_token_id=ids(VISION_END))
    raw["text_config"].update(bos_token_id=ids(ENDOFTEXT), eos_token_id=ids(IM_END))
    if len(tokenizer) > raw["text_config"]["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary")
    return Qwen3VLConfig(**raw)


def build_model(size: str, tokenizer: Any, device: str, dtype: torch.dtype) -> Any:
    """The Qwen3-VL of ``size`` (``2b``: Qwen3-VL-2B-Instruct's shape; ``tiny``: the test fixture), random
    weights from seed 0, built on ``device`` in ``dtype``."""
    from transformers import Qwen3VLForConditionalGeneration

    from cepo.testing.models import seeded_model, tiny_qwen3vl_config

    config = qwen3vl_2b_config(tokenizer) if size == "2b" else tiny_qwen3vl_config(tokenizer)
    return seeded_model(Qwen3VLForConditionalGeneration, config, tokenizer, seed=0, device=device, dtype=dtype)


def build_processor(size: str, tokenizer: Any) -> Any:
    """Qwen3-VL's processor on the offline tokenizer: Qwen3-VL-2B's pixel budget for ``2b``, the tiny one else."""
    from cepo.testing import build_tiny_processor

    if size == "2b":
        return build_tiny_processor(tokenizer, min_pixels=QWEN3VL_MIN_PIXELS, max_pixels=QWEN3VL_MAX_PIXELS)
    return build_tiny_processor(tokenizer)


def make_dataset(processor: Any, n: int, prompt_tokens: int, image_size: int, seed: int = 0) -> tuple[Any, list[int]]:
    """``n`` Geo3k-like rows (one ``image_size`` square image, integer answers) whose prompts, as TRL renders them
    (image tokens included: ``cepo.integrations.trl.data.prompt_length``), are padded with filler words
    (``overhead.WORDS``) to at most ``prompt_tokens`` tokens. Returns the conversational dataset (``cepo.data.
    to_conversational``) and each row's prompt length."""
    from overhead import WORDS

    from cepo.data import to_conversational
    from cepo.data.geo3k import student_prompt
    from cepo.integrations.trl.data import prompt_length
    from cepo.testing import make_geo3k_like

    def padded(problem: str, words: int) -> str:
        return " ".join([problem, *(WORDS[i % len(WORDS)] for i in range(words))])

    raw = make_geo3k_like(n, seed=seed, image_size=image_size)
    problems, lengths = [], []
    for problem, images in zip(raw["problem"], raw["images"], strict=True):

        def length(words: int, problem: str = problem, images: Any = images) -> int:
            message = {"role": "user", "content": student_prompt(padded(problem, words))}
            return prompt_length(processor, [message], images)

        low, high = 0, 1
        while length(high) <= prompt_tokens and high < 1 << 16:
            low, high = high, high * 2
        while high - low > 1:  # the largest filler that fits
            mid = (low + high) // 2
            low, high = (mid, high) if length(mid) <= prompt_tokens else (low, mid)
        problems.append(padded(problem, low))
        lengths.append(length(low))
    return to_conversational(raw.remove_columns("problem").add_column("problem", problems)), lengths


# -- the trainer, as `cepo train` sets it up -------------------------------------------------------------------------


def trainer_settings(method: str, prompts: int, group: int, response_tokens: int, micro_batch: int, rounds: int,
                     device: str, dtype: torch.dtype, output_dir: str | Path) -> dict[str, Any]:
    """``CEPOGRPOConfig`` keywords of ``cepo train --config configs/<method>.yaml`` on one process with
    ``data.train_batch_size=prompts``, ``actor_rollout_ref.actor.ppo_mini_batch_size=prompts/2`` (two optimizer
    steps per rollout batch, as the paper's 16 of 32), ``ppo_micro_batch_size_per_gpu=micro_batch``,
    ``rollout.n=group`` and ``data.max_response_length=response_tokens`` (``cepo.integrations.trl.from_config.
    trl_args``'s mapping of ``configs/paper_base.yaml``; the tests compare the two), for ``rounds`` rollout batches;
    the lambda schedule is held at 0.5 (timing does not depend on it)."""
    mini = prompts // 2
    return {
        "output_dir": str(output_dir), "use_cpu": device == "cpu", "bf16": dtype == torch.bfloat16, "fp16": False,
        "per_device_train_batch_size": micro_batch, "gradient_accumulation_steps": mini * group // micro_batch,
        "steps_per_generation": prompts * group // micro_batch, "num_iterations": 1, "num_generations": group,
        "max_completion_length": response_tokens, "gradient_checkpointing": True,
        "learning_rate": PAPER_LEARNING_RATE.get(method, 1e-6), "lr_scheduler_type": "cosine", "weight_decay": 0.01,
        "epsilon": 0.2, "epsilon_high": 0.28, "temperature": 1.0, "max_steps": rounds * prompts // mini,
        "logging_steps": 1, "report_to": "none", "save_strategy": "no", "seed": 0, "disable_tqdm": True,
        "shuffle_dataset": False, "cepo_method": method, "cepo_lambda_schedule": "constant", "cepo_lam0": 0.5,
        "cepo_eps_w": 0.5,
    }


def check_trainer_class(timer: Any, replay: Any, generate: bool) -> type:
    """``overhead.timed_trainer_class``; without ``generate``, TRL's generation call returns filler token ids of
    the full response length instead of running the model (the replayed completions replace them anyway)."""
    from overhead import WORDS, timed_trainer_class

    timed = timed_trainer_class(timer, replay)
    if generate:
        return timed
    tokenizer = replay.tokenizer
    words = tokenizer(" " + " ".join(WORDS), add_special_tokens=False)["input_ids"]
    filler = [words[i % len(words)] for i in range(replay.length)]

    class NoGeneration(timed):  # type: ignore[misc, valid-type]
        def _generate_single_turn(self, prompt_ids: list, *args: Any, **kwargs: Any) -> tuple[list, None]:
            return [list(filler) for _ in prompt_ids], None

    return NoGeneration


# -- stage 1: CEPO against GRPO at the paper's lengths ------------------------------------------------------------


def run_trl_stage(ns: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """Each method in ``ns.methods`` on a fresh model; returns the stage's JSON (per method: ``status`` and, when
    ``ok``, ``overhead.summarize_runs``'s fields)."""
    import transformers
    from overhead import PhaseTimer, Replay, free_memory, method_ratios, phase_line, run_timed, summarize_runs

    from cepo.integrations.trl import CEPOGRPOConfig
    from cepo.integrations.trl.run import lora_config
    from cepo.testing import build_qwen_tokenizer

    transformers.logging.set_verbosity_error()
    dtype = getattr(torch, ns.dtype)
    tokenizer = build_qwen_tokenizer()
    processor = build_processor(ns.size, tokenizer)
    rounds = ns.rounds + 1  # the first is warm-up
    tic = time.perf_counter()
    data, lengths = make_dataset(processor, ns.prompts * rounds, ns.prompt_tokens, ns.image_size)
    _say(f"  data: {len(data)} prompts of {min(lengths)}-{max(lengths)} tokens (image {ns.image_size}px) in "
         f"{time.perf_counter() - tic:.1f} s")
    replay = Replay(tokenizer, ns.response_tokens, ns.group)
    stage: dict[str, Any] = {
        "model": "Qwen3-VL-2B-Instruct configuration, random weights" if ns.size == "2b" else "tiny Qwen3-VL fixture",
        "config_file": str(QWEN3VL_2B_CONFIG.relative_to(REPO)) if ns.size == "2b" else None,
        "tokenizer": "cepo.testing.build_qwen_tokenizer (offline, Qwen special tokens)",
        "lora": {"rank": LORA_RANK, "alpha": LORA_ALPHA}, "gradient_checkpointing": True, "dtype": ns.dtype,
        "generation": ns.generation, "prompt_tokens": lengths, "response_tokens": ns.response_tokens,
        "group": ns.group, "prompts_per_round": ns.prompts, "rows_per_round": ns.prompts * ns.group,
        "micro_batch": ns.micro_batch, "rounds_timed": ns.rounds, "methods": {},
    }
    for method in ns.methods:
        _say(f"  {method}: building the model and training {rounds} rollout batches ({rounds - 1} timed)")
        model = trainer = None
        tic = time.perf_counter()
        try:
            with time_limit(deadline - time.monotonic()):
                model = build_model(ns.size, tokenizer, ns.device, dtype).train()
                stage["parameters"] = sum(p.numel() for p in model.parameters())
                settings = trainer_settings(method, ns.prompts, ns.group, ns.response_tokens, ns.micro_batch, rounds,
                                            ns.device, dtype, Path(tempfile.gettempdir()) / "cepo-gpu-check")
                if ns.generation == "hf":
                    settings["generation_kwargs"] = {"min_new_tokens": ns.response_tokens}
                timer = PhaseTimer()
                run, trainer = run_timed(check_trainer_class(timer, replay, ns.generation == "hf"), timer, model,
                                         CEPOGRPOConfig(**settings), data, processor, ns.device,
                                         peft_config=lora_config(LORA_RANK, LORA_ALPHA))
            result = {"status": "ok", **summarize_runs([run])}
            _say(f"    {method:<5} {phase_line(result['phases_per_round'])}; peak {run.peak_bytes / GIB:.2f} GiB")
        except BudgetExceeded as err:
            result = {"status": "timeout", "error": str(err)}
        except torch.cuda.OutOfMemoryError as err:
            result = {"status": "oom", "error": _first_line(err)}
        except Exception as err:  # record it and go on: one broken run must not lose the others
            result = {"status": "error", "error": f"{type(err).__name__}: {_first_line(err)}",
                      "traceback": traceback.format_exc()[-4000:]}
        result["seconds"] = time.perf_counter() - tic
        if result["status"] != "ok":
            _say(f"    {method}: {result['status']}: {result['error']}")
        stage["methods"][method] = result
        del model, trainer
        free_memory(ns.device)
    done = {m: r for m, r in stage["methods"].items() if r["status"] == "ok"}
    stage["ratios"] = method_ratios(done) if "grpo" in done and len(done) > 1 else {}
    return stage


def _first_line(err: BaseException) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__


# -- stage 2: overhead.py at a few sizes --------------------------------------------------------------------------


def overhead_command(ns: argparse.Namespace, size: str) -> list[str]:
    """``benchmarks/overhead.py`` for one size (paper layout, one timed rollout batch, one repeat)."""
    return [sys.executable, str(BENCH_DIR / "overhead.py"), "--device", ns.device, "--dtype", ns.dtype,
            "--sizes", size, "--lengths", *map(str, ns.overhead_lengths), "--layouts", "paper", "--steps", "1",
            "--repeats", "1", "--group", str(ns.group), "--no-paper-point", "--out-dir", str(ns.out),
            "--name", f"overhead_{size}"]


def run_overhead_stage(ns: argparse.Namespace, deadline: float) -> list[dict[str, Any]]:
    """One ``overhead.py`` subprocess per size, smallest first, each with the budget left; returns per size its
    ``status`` (``ok``, ``oom``, ``error``, ``timeout``, ``skipped``) and, when ``ok``, the file's ``configs``."""
    out = []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    env.pop("MALLOC_MMAP_THRESHOLD_", None)  # let overhead.py set its allocator up itself
    for size in ns.overhead_sizes:
        command = overhead_command(ns, size)
        entry: dict[str, Any] = {"size": size, "command": " ".join(["python", "benchmarks/overhead.py", *command[2:]])}
        left = deadline - time.monotonic()
        if left < 20:
            entry.update(status="skipped", error=f"{left:.0f} s of budget left")
            _say(f"  overhead size {size}: skipped ({entry['error']})")
            out.append(entry)
            continue
        _say(f"  overhead size {size}: running (at most {left:.0f} s)")
        tic = time.perf_counter()
        try:
            proc = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=left)
            log = proc.stdout
            result = Path(ns.out) / f"overhead_{size}.json"
            if proc.returncode == 0 and result.is_file():
                entry.update(status="ok", configs=json.loads(result.read_text())["configs"], file=result.name)
            else:
                oom = "OutOfMemoryError" in log or "CUDA out of memory" in log
                entry.update(status="oom" if oom else "error", error=f"exit {proc.returncode}", log_tail=log[-3000:])
        except subprocess.TimeoutExpired as err:
            log = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
            entry.update(status="timeout", error=f"ran past the budget ({left:.0f} s)", log_tail=log[-3000:])
        entry["seconds"] = time.perf_counter() - tic
        for line in log.splitlines():
            if line.startswith("    ") or "wrote" in line:
                _say(f"  {line}")
        if entry["status"] != "ok":
            _say(f"  overhead size {size}: {entry['status']}: {entry['error']}")
        out.append(entry)
    return out


# -- report -------------------------------------------------------------------------------------------------------

TRL_COLUMNS = ("method", "status", "round s", "without generation s", "old log-probs s", "teacher build s",
               "teacher forward s", "student forward s", "update s", "teacher rows", "peak GiB", "vs GRPO step",
               "vs GRPO peak")
OVERHEAD_COLUMNS = ("size", "parameters", "response", "method", "status", "round s", "without generation s",
                    "teacher forward s", "vs GRPO step", "vs GRPO peak", "peak GiB")


GENERATION_NOTE = {"skip": "skipped (both methods train on the same replayed completions; the real job generates "
                            "with vLLM)", "hf": "HF generate, forced to the full length"}


def _number(value: Any, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _ratio(value: Any) -> str:
    return "" if value is None else f"{value:.2f}x"


def _phases_row(phases: dict[str, float]) -> list[str]:
    return [_number(phases["total"]), _number(phases["total"] - phases.get("generation", 0.0))]


def trl_rows(stage: dict[str, Any]) -> list[list[str]]:
    """The stage-1 table's cells, one row per method (empty cells where the run did not finish)."""
    rows = []
    for method, r in stage["methods"].items():
        if r["status"] != "ok":
            rows.append([method, r["status"], *[""] * (len(TRL_COLUMNS) - 2)])
            continue
        p = r["phases_per_round"]
        rows.append([
            method, "ok", *_phases_row(p), *(_number(p.get(k, 0.0)) for k in (
                "old_logprobs", "teacher_build", "teacher_forward", "student_forward", "update")),
            f"{r['teacher_rows_per_round']:.0f}", _number(r["peak_bytes"] / GIB),
            _ratio(stage["ratios"].get(f"{method}_over_grpo_step")),
            _ratio(stage["ratios"].get(f"{method}_over_grpo_peak_memory")),
        ])
    return rows


def overhead_rows(entries: list[dict[str, Any]]) -> list[list[str]]:
    """The stage-2 table's cells, one row per size x length x method (one row per size that did not finish)."""
    rows = []
    for entry in entries:
        if entry["status"] != "ok":
            rows.append([entry["size"], "", "", "", entry["status"], *[""] * (len(OVERHEAD_COLUMNS) - 5)])
            continue
        for config in entry["configs"]:
            for method, r in config["methods"].items():
                p = r["phases_per_round"]
                rows.append([
                    config["config"]["size"], f"{config['parameters'] / 1e6:.1f}M", str(config["config"]["length"]),
                    method, "ok", *_phases_row(p), _number(p.get("teacher_forward", 0.0)),
                    _ratio(config["ratios"].get(f"{method}_over_grpo_step")),
                    _ratio(config["ratios"].get(f"{method}_over_grpo_peak_memory")), _number(r["peak_bytes"] / GIB),
                ])
    return rows


def _table(columns: tuple[str, ...], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(row) + " |" for row in rows)]


def device_line(machine: dict[str, Any]) -> str:
    """``NVIDIA H200 (139.8 GiB, sm 9.0, CUDA 13.0); torch ..., transformers ..., trl ..., peft ...``."""
    if machine.get("gpu"):
        where = (f"{machine['gpu']} ({machine['gpu_memory_bytes'] / GIB:.1f} GiB, compute capability "
                 f"{machine['gpu_capability']}, CUDA {machine['cuda']})")
    else:
        where = f"CPU: {machine['cpu']}, {machine['cores']} cores"
    versions = ", ".join(f"{k} {machine[k]}" for k in ("torch", "transformers", "trl", "peft") if machine.get(k))
    return f"{where}; {versions}"


def markdown(payload: dict[str, Any]) -> str:
    """``gpu_check.md``: the device, the settings, and both tables (cells from the JSON)."""
    trl, ns = payload["trl"], payload["settings"]
    lengths = trl["prompt_tokens"]
    size = f" ({trl['parameters'] / 1e6:,.1f}M parameters)" if "parameters" in trl else ""
    lines = [
        "# GPU check", "",
        f"Device: {device_line(payload['machine'])}.", "",
        f"Command: `{payload['command']}` ({payload['seconds'] / 60:.1f} min).", "",
        "## CEPO against GRPO on the TRL engine", "",
        f"{trl['model']}{size}, {ns['dtype']}, gradient checkpointing, "
        f"LoRA r{trl['lora']['rank']}/alpha {trl['lora']['alpha']}; "
        f"prompts of {min(lengths)}-{max(lengths)} tokens (image {ns['image_size']}px), responses of "
        f"{trl['response_tokens']} tokens, G = {trl['group']}, {trl['rows_per_round']} sequences per rollout batch "
        f"in micro-batches of {trl['micro_batch']}; the offline Qwen-style tokenizer; generation: "
        f"{GENERATION_NOTE[trl['generation']]}. Seconds per rollout batch "
        f"(mean of {trl['rounds_timed']} after a warm-up one); peak: "
        f"{'CUDA max_memory_allocated' if payload['machine'].get('gpu') else 'process RSS'}.", "",
        *_table(TRL_COLUMNS, trl_rows(trl)), "",
        "## benchmarks/overhead.py (Qwen3-shaped text decoders, paper layout)", "",
        *_table(OVERHEAD_COLUMNS, overhead_rows(payload["overhead"])), "",
    ]
    return "\n".join(lines)


# -- command line -------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, overhead_<size>.json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--size", choices=sorted(PRESETS), default=None, help="default: 2b on CUDA, tiny on CPU")
    parser.add_argument("--methods", nargs="+", default=["grpo", "cepo"])
    parser.add_argument("--prompt-tokens", type=int, help="prompt length incl. image tokens (2b: 768)")
    parser.add_argument("--response-tokens", type=int, help="response length (2b: 2048)")
    parser.add_argument("--group", type=int, help="G, rollouts per prompt (2b: 8)")
    parser.add_argument("--prompts", type=int, help="prompts per rollout batch, even (2b: 4)")
    parser.add_argument("--micro-batch", type=int, help="sequences per forward/backward (2b: 4)")
    parser.add_argument("--image-size", type=int, help="side of the square image in pixels (2b: 512)")
    parser.add_argument("--rounds", type=int, help="timed rollout batches per method, after a warm-up one (2b: 2)")
    parser.add_argument("--generation", choices=("skip", "hf"), default="skip")
    parser.add_argument("--overhead-sizes", nargs="*", help="overhead.py sizes (2b: M L XL 2B; none: skip)")
    parser.add_argument("--overhead-lengths", nargs="+", type=int, help="overhead.py response lengths (2b: 512)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="time budget of the whole check in seconds")
    parser.add_argument("--trl-share", type=float, default=0.6, help="part of the budget stage 1 may use at most")
    ns = parser.parse_args(argv)
    ns.size = ns.size or ("2b" if ns.device.startswith("cuda") else "tiny")
    ns.dtype = ns.dtype or ("bfloat16" if ns.device.startswith("cuda") else "float32")
    for key, value in PRESETS[ns.size].items():
        if getattr(ns, key) is None:
            setattr(ns, key, value)
    return ns


REQUIRED_PACKAGES = ("transformers", "peft", "accelerate", "trl", "datasets", "mathruler")


def check_args(ns: argparse.Namespace) -> str | None:
    """The first problem with the settings or the environment, as one line naming the option (or the package) and
    the fix; ``None`` if none."""
    import importlib.util

    from overhead import SIZES

    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        return (f"missing Python package(s) {', '.join(missing)}: install them, or carry their wheels in .whl/ and "
                "run benchmarks/gpu_check.sh (it installs them)")
    if ns.device.startswith("cuda") and not torch.cuda.is_available():
        return f"--device {ns.device}: this torch sees no CUDA device; run on a GPU machine or pass --device cpu"
    for name in ("prompt_tokens", "response_tokens", "group", "prompts", "micro_batch", "image_size", "rounds"):
        if getattr(ns, name) < 1:
            return f"--{name.replace('_', '-')} must be a positive integer, got {getattr(ns, name)}"
    if ns.prompts % 2:
        return f"--prompts {ns.prompts}: must be even (two optimizer steps per rollout batch, as the paper's 16 of 32)"
    if (ns.prompts // 2 * ns.group) % ns.micro_batch:
        return (f"--micro-batch {ns.micro_batch} must divide the optimizer batch --prompts/2 x --group = "
                f"{ns.prompts // 2 * ns.group} sequences")
    if "grpo" not in ns.methods:
        return "--methods must include grpo (the baseline every ratio is taken against)"
    unknown = [s for s in ns.overhead_sizes if s not in SIZES]
    if unknown:
        return f"--overhead-sizes {' '.join(unknown)}: unknown; choose from {' '.join(SIZES)}"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ns = parse_args(argv)
    problem = check_args(ns)
    if problem:
        print(f"gpu_check: {problem}", file=sys.stderr)
        return 2
    from _arith import machine_info, write_json

    start = time.monotonic()
    deadline = start + ns.budget_s
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info(ns.device)
    _say(f"gpu check on {device_line(machine)}; budget {ns.budget_s:.0f} s; writing to {out}")
    _say(f"stage 1: CEPO against GRPO, TRL, {ns.size} Qwen3-VL, prompt {ns.prompt_tokens} / response "
         f"{ns.response_tokens} tokens, G = {ns.group}, {ns.prompts} prompts per rollout batch")
    trl = run_trl_stage(ns, min(deadline, start + ns.trl_share * ns.budget_s))
    _say(f"stage 2: benchmarks/overhead.py --device {ns.device} --dtype {ns.dtype}, sizes "
         f"{' '.join(ns.overhead_sizes) or '(none)'}, lengths {' '.join(map(str, ns.overhead_lengths))}")
    overhead = run_overhead_stage(ns, deadline)
    settings = {k: v for k, v in vars(ns).items() if k != "out"}
    payload = {
        "benchmark": "gpu_check", "command": " ".join(["python", "benchmarks/gpu_check.py", *argv]),
        "machine": machine, "settings": settings, "trl": trl, "overhead": overhead,
        "seconds": time.monotonic() - start,
    }
    write_json("gpu_check.json", payload, out)
    (out / "gpu_check.md").write_text(markdown(payload))
    _say("\n" + markdown(payload))
    _say(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {payload['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
