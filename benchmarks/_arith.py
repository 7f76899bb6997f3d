"""Shared pieces of the credit-precision and learning benchmarks: a controlled arithmetic task, a tiny word-level
tokenizer with the ChatML template, a Qwen3-shaped model built locally, its cached supervised warm start, batched
sampling, verification and the log-prob passes (through ``cepo.teacher``, the code the engines use).

Task: ``Compute (a+b)*c-d.`` with the fixed solution ``a+b=s. s*c=p. p-d=r. \\boxed{r}``. The three results
``s``, ``p``, ``r`` are the decisive tokens; the restated operands, the operators and the format are filler. The
final answer ``r`` is the teacher's hint r+ (Appendix B template); about 40% of the warm-start prompts carry it, so
the answer-conditioned teacher has learnt to use it.

Nothing here downloads anything; the tokenizer and model are built from code.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from cepo.teacher import STUDENT_TEMPLATE, build_teacher_inputs, teacher_logprobs, teacher_prompt_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE = Path(os.environ.get("CEPO_BENCH_CACHE", Path.home() / ".cache" / "cepo-benchmarks"))

# -- machine ------------------------------------------------------------------------------------------------------


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, cores, load, torch/transformers versions and the accelerator, for every result file."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["gpu_memory_bytes"] = int(props.total_memory)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
    for package in ("trl", "peft"):
        with contextlib.suppress(ImportError):
            info[package] = __import__(package).__version__
    return info


def machine_line(info: dict[str, Any]) -> str:
    """One line describing the machine, printed above every table."""
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads)"
    load = info.get("load_average_1m")
    load_text = f", load avg {load:.1f} at start" if load is not None else ""
    return f"machine: {where}{load_text}; torch {info['torch']}, transformers {info['transformers']}"


def write_json(name: str, payload: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``payload`` to ``out_dir/name`` (pretty JSON) and return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n")
    return path


# -- task ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArithProblem:
    """``(a+b)*c-d`` with its step results."""

    a: int
    b: int
    c: int
    d: int

    @property
    def s(self) -> int:
        return self.a + self.b

    @property
    def p(self) -> int:
        return self.s * self.c

    @property
    def r(self) -> int:
        return self.p - self.d

    @property
    def question(self) -> str:
        return f"Compute ({self.a}+{self.b})*{self.c}-{self.d}."

    @property
    def answer(self) -> str:
        return str(self.r)

    @property
    def solution(self) -> str:
        s, p, r = self.s, self.p, self.r
        return f"{self.a}+{self.b}={s}. {s}*{self.c}={p}. {p}-{self.d}={r}. \\boxed{{{r}}}"

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.question}]

    def slipped_solution(self, rng: random.Random) -> str:
        """The solution format with one slip: one result (s, p or r, uniformly) has its last digit off by 1 or 2,
        and the later steps compute consistently from it (so the final answer is wrong)."""
        step = rng.randrange(3)
        delta = rng.choice((-2, -1, 1, 2))
        s = self.s + (delta if step == 0 else 0)
        if s < 0:
            s = self.s + abs(delta)
        p = s * self.c + (delta if step == 1 else 0)
        if p < 0:
            p = s * self.c + abs(delta)
        r = p - self.d + (delta if step == 2 else 0)
        return f"{self.a}+{self.b}={s}. {s}*{self.c}={p}. {p}-{self.d}={r}. \\boxed{{{r}}}"


@dataclass(frozen=True)
class TaskRanges:
    """Operand ranges (inclusive); ``d`` is also kept below ``p`` so the answer is positive."""

    ab: tuple[int, int] = (1, 99)
    c: tuple[int, int] = (2, 9)
    d: tuple[int, int] = (1, 49)


def is_held_out(problem: ArithProblem) -> bool:
    """One problem in ten (by a hash of its text) is held out: never trained on, the evaluation pool."""
    return zlib.crc32(problem.question.encode()) % 10 == 0


def sample_problems(n: int, seed: int, held_out: bool, ranges: TaskRanges = TaskRanges()) -> list[ArithProblem]:
    """``n`` random problems from the training (``held_out=False``) or held-out split; distinct when held out."""
    rng = random.Random(seed)
    out: list[ArithProblem] = []
    seen: set[ArithProblem] = set()
    while len(out) < n:
        a, b = rng.randint(*ranges.ab), rng.randint(*ranges.ab)
        c = rng.randint(*ranges.c)
        p = (a + b) * c
        d = rng.randint(ranges.d[0], max(ranges.d[0], min(ranges.d[1], p - 1)))
        problem = ArithProblem(a, b, c, d)
        if is_held_out(problem) != held_out or (held_out and problem in seen):
            continue
        seen.add(problem)
        out.append(problem)
    return out


# -- tokenizer ----------------------------------------------------------------------------------------------------

WORDS = ("user", "assistant", "system", "Compute", "Here", "is", "a", "sample", "answer", "boxed", "None")
SYMBOLS = ("+", "-", "*", "=", ".", ",", ":", "(", ")", "{", "}", "\\", "/", " ", "\n", "\n\n")
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_arith_tokenizer() -> Any:
    """A word-level tokenizer for the task (single digits, the few words of the prompts), ChatML chat template.

    ``pad = <|endoftext|>``, ``eos = <|im_end|>``; decoding concatenates tokens, so it round-trips the text. The
    vocabulary (about 45 entries) keeps the LM head of the tiny model negligible.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from cepo.testing.tokenizer import CHAT_TEMPLATE

    vocab = {token: i for i, token in enumerate(["[UNK]", *WORDS, *[str(d) for d in range(10)], *SYMBOLS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d|[A-Za-z]+|\n+| +|[^\sA-Za-z\d]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


# -- model --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSize:
    """A Qwen3-shaped decoder (GQA with half the heads as KV heads, SwiGLU MLP, RMSNorm, RoPE)."""

    hidden: int = 64
    layers: int = 3
    heads: int = 4
    intermediate: int = 192


def qwen3_config(tokenizer: Any, size: ModelSize) -> Any:
    """``Qwen3Config`` for ``tokenizer``'s vocabulary."""
    from transformers import Qwen3Config

    return Qwen3Config(
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=max(1, size.heads // 2),
        head_dim=size.hidden // size.heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.pad_token_id,
    )


def build_model(tokenizer: Any, size: ModelSize, seed: int = 0) -> Any:
    """A randomly initialised float32 ``Qwen3ForCausalLM`` (global RNG untouched)."""
    from transformers import Qwen3ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(qwen3_config(tokenizer, size)).to(torch.float32)
    gen = model.generation_config
    gen.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False
    return model


# -- prompts ------------------------------------------------------------------------------------------------------


def student_prompt(tokenizer: Any, problem: ArithProblem) -> str:
    return tokenizer.apply_chat_template(problem.messages(), add_generation_prompt=True, tokenize=False)


def hinted_prompt(tokenizer: Any, problem: ArithProblem, hint: str | None = None) -> str:
    """The teacher prompt of ``cepo.teacher`` (Appendix B template) with ``hint`` (default: the true answer)."""
    text, _ = teacher_prompt_text(tokenizer, problem.messages(), problem.answer if hint is None else hint)
    return text


# -- warm start ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmStartConfig:
    """Supervised warm start on correct solutions; ``hint_fraction`` of the prompts carry the hint."""

    size: ModelSize = ModelSize()
    ranges: TaskRanges = TaskRanges()
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    warmup: int = 50
    hint_fraction: float = 0.4
    slip_fraction: float = 0.0  # unhinted targets with one slip (see ArithProblem.slipped_solution); hinted: none
    seed: int = 0
    version: int = 1  # bump when the task, tokenizer or training code changes

    def key(self) -> str:
        fields = asdict(self)
        if not fields["slip_fraction"]:  # added later: keep the key of correct-only warm starts unchanged
            del fields["slip_fraction"]
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def _sft_batch(tokenizer: Any, problems: Sequence[ArithProblem], hinted: Sequence[bool],
               slipped: Sequence[bool] | None = None, rng: random.Random | None = None) -> dict[str, torch.Tensor]:
    prompts = [hinted_prompt(tokenizer, p) if h else student_prompt(tokenizer, p) for p, h in zip(problems, hinted,
                                                                                                    strict=True)]
    slipped = slipped or [False] * len(problems)
    rng = rng or random.Random(0)
    targets = [(p.slipped_solution(rng) if slip else p.solution) + tokenizer.eos_token
               for p, slip in zip(problems, slipped, strict=True)]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    width = max(len(a) + len(b) for a, b in zip(prompt_ids, target_ids, strict=True))
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for i, (a, b) in enumerate(zip(prompt_ids, target_ids, strict=True)):
        row = a + b
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(a) : len(row)] = torch.tensor(b)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_warm_start(config: WarmStartConfig, progress: bool = True) -> tuple[Any, Any, list[float]]:
    """Build the tokenizer and model and run the warm start (AdamW, linear warm-up, cosine decay to 0)."""
    from tqdm.auto import tqdm

    tokenizer = build_arith_tokenizer()
    model = build_model(tokenizer, config.size, seed=config.seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress_frac = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * (1.0 + torch.cos(torch.tensor(progress_frac * torch.pi)).item())

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    rng = random.Random(config.seed + 1)
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc="warm start (SFT)", unit="step", disable=not progress, mininterval=2.0)
    for step in bar:
        problems = sample_problems(config.batch_size, seed=rng.randrange(2**31), held_out=False,
                                   ranges=config.ranges)
        hinted = [rng.random() < config.hint_fraction for _ in problems]
        slipped = [not h and rng.random() < config.slip_fraction for h in hinted]
        batch = _sft_batch(tokenizer, problems, hinted, slipped, rng)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
    bar.close()
    model.eval()
    return model, tokenizer, losses


def load_or_train_warm_start(
    config: WarmStartConfig, cache_dir: Path = DEFAULT_CACHE, progress: bool = True, echo: bool = True
) -> tuple[Any, Any, dict[str, Any]]:
    """The warm-started model from ``cache_dir/warm-start-<key>``, trained (and cached) on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(cache_dir) / f"warm-start-{config.key()}"
    info_file = path / "warm_start.json"
    if info_file.is_file():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model.eval()
        info = json.loads(info_file.read_text())
        info["cached"] = True
        if echo:
            print(f"warm start: cached in {path}", flush=True)
        return model, tokenizer, info
    if echo:
        print(f"warm start: {config.steps} supervised steps (once; cached in {path})", flush=True)
    tic = time.perf_counter()
    model, tokenizer, losses = train_warm_start(config, progress=progress)
    seconds = time.perf_counter() - tic
    info = {"config": asdict(config), "seconds": seconds, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
            "parameters": sum(p.numel() for p in model.parameters()), "cached": False}
    staged = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    model.save_pretrained(staged)
    tokenizer.save_pretrained(staged)
    (staged / "warm_start.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staged, path)
    if echo:
        print(f"warm start: done in {seconds:.0f} s (final loss {info['final_loss']:.3f})", flush=True)
    return model, tokenizer, info


# -- sampling and scoring -----------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """Sampled responses: ``ids`` (N, T) right-padded with ``mask`` (1 on response tokens, the EOS included)."""

    ids: torch.Tensor
    mask: torch.Tensor
    texts: list[str]

    def row_ids(self, i: int) -> list[int]:
        return self.ids[i, : int(self.mask[i].sum())].tolist()


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    greedy: bool = False,
    temperature: float = 1.0,
    batch_size: int = 512,
    seed: int | None = None,
) -> Rollouts:
    """Responses to chat-rendered ``prompts`` (one each); sampling uses the full distribution (no top-k/top-p)."""
    device = next(model.parameters()).device
    eos = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    generator_state = None
    if seed is not None:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
    rows: list[list[int]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
            kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                                      "eos_token_id": list(eos)}
            if greedy:
                kwargs.update(do_sample=False)
            else:
                kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
            out = model.generate(input_ids=enc["input_ids"].to(device), attention_mask=enc["attention_mask"].to(device),
                                 **kwargs)
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                kept = []
                for token in row:
                    kept.append(token)
                    if token in eos:
                        break
                if kept and kept[-1] == tokenizer.pad_token_id:  # padding after an earlier stop
                    kept[-1] = tokenizer.eos_token_id
                rows.append(kept)
    finally:
        if generator_state is not None:
            torch.random.set_rng_state(generator_state)
    width = max(1, max(len(r) for r in rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    texts = tokenizer.batch_decode(ids.masked_fill(mask == 0, tokenizer.pad_token_id), skip_special_tokens=True)
    return Rollouts(ids=ids, mask=mask, texts=texts)


def accuracy(model: Any, tokenizer: Any, problems: Sequence[ArithProblem], hinted: bool = False,
             greedy: bool = True, seed: int = 0, max_new_tokens: int = 48) -> float:
    """Fraction of ``problems`` answered correctly (greedy by default), with or without the hint."""
    from cepo.rewards import compute_score

    prompts = [hinted_prompt(tokenizer, p) if hinted else student_prompt(tokenizer, p) for p in problems]
    roll = generate(model, tokenizer, prompts, greedy=greedy, seed=seed, max_new_tokens=max_new_tokens)
    return sum(compute_score(t, p.answer).accuracy for t, p in zip(roll.texts, problems, strict=True)) / len(problems)


@torch.no_grad()
def context_logprobs(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Sequence[dict[str, Any]]],
    hints: Sequence[str | None],
    rollouts: Rollouts,
    rows: Sequence[int] | None = None,
    micro_batch_size: int = 256,
) -> torch.Tensor:
    """(N, T) log-probs of the response tokens under ``[prompt + hint] + response`` (``cepo.teacher``).

    A hint of ``None`` scores the student context (the prompt as the student saw it: ``cepo.teacher``'s
    ``STUDENT_TEMPLATE`` with an empty hint). Only ``rows`` (default all) are scored; the others stay 0.
    """
    n = rollouts.ids.shape[0]
    out = torch.zeros(rollouts.ids.shape, dtype=torch.float32)
    rows = list(range(n)) if rows is None else list(rows)
    student = [r for r in rows if hints[r] is None]
    teacher = [r for r in rows if hints[r] is not None]
    for subset, template in ((student, STUDENT_TEMPLATE), (teacher, None)):
        if not subset:
            continue
        for start in range(0, len(subset), micro_batch_size):
            part = subset[start : start + micro_batch_size]
            kwargs = {"template": template} if template is not None else {}
            inputs = build_teacher_inputs(
                tokenizer,
                [messages[r] for r in part],
                ["" if hints[r] is None else str(hints[r]) for r in part],
                rollouts.ids[part],
                rollouts.mask[part],
                **kwargs,
            )
            out[part] = teacher_logprobs(model, inputs).cpu()
    return out
