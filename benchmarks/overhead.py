"""What the teacher passes cost on the TRL engine: step time by phase and peak memory, GRPO vs RLSD vs CEPO.

One process, one run. For every model size (Qwen3-shaped decoders built locally) and response length, every method
trains the same number of steps from the same initial weights on the *same rollouts*: each step generates for real
(TRL's own generation path, forced to the response length), then the completions are replaced by the ones the first
method generated at that step, ending in ``\\boxed{answer}``: half of each group right, half wrong, so every row has
a non-zero advantage and every group an r- (the teacher's worst case: no row is skipped). Prompts are 3/8 of the
response length (the paper's 768 / 2048).

Phases (``cepo.analysis.PhaseTimer``; exclusive times that sum to the step): ``generation``; ``reward``;
``old_logprobs`` (TRL's old-log-prob pass); ``teacher_build`` (r-/r+ choice, teacher prompt rendering and
tokenisation); ``teacher_forward`` (the teacher rows' log-prob passes); ``student_forward`` (P_S passes TRL did not
provide); ``credit`` (Eq. 1, Eq. 7 and TRL's own bookkeeping after generation); ``update`` (everything else: loss
forward, backward, optimizer step). The CEPOTrainer is only wrapped, never changed.

Two batch layouts: ``paper`` (two optimizer steps per rollout batch, as the paper's verl runs: TRL computes old
log-probs, CEPO reads them as P_S) and ``on_policy`` (TRL's default: one update per rollout batch, no old-log-prob
pass, so RLSD/CEPO score P_S themselves).

Usage (writes ``benchmarks/results/overhead.json``)::

    python benchmarks/overhead.py            # S, M x 32, 128, 512 tokens x both layouts + S at 768/2048 (~25 min)
    python benchmarks/overhead.py --quick    # size S, lengths 32 and 128, paper layout
    python benchmarks/overhead.py --device cuda --dtype bfloat16 --sizes M L XL --lengths 512 2048
"""

from __future__ import annotations

import os
import sys

if sys.platform.startswith("linux") and "MALLOC_MMAP_THRESHOLD_" not in os.environ and "--no-reexec" not in sys.argv:
    # Freed tensors must leave the resident set, or RSS peaks say nothing per method: fix glibc's mmap threshold
    # (tensors above 64 KiB get their own mapping, returned on free) and re-run this script with it.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.execve(sys.executable, [sys.executable, *sys.argv], env)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import gc
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _arith import RESULTS_DIR, machine_info, machine_line, write_json

from cepo.analysis.timing import PeakMemory, PhaseTimer

METHODS = ("grpo", "rlsd", "cepo")


@dataclass(frozen=True)
class Size:
    name: str
    hidden: int
    layers: int
    heads: int
    intermediate: int


SIZES = {
    "S": Size("S", 128, 4, 4, 384),
    "M": Size("M", 256, 6, 4, 768),
    "L": Size("L", 512, 8, 8, 1536),
    "XL": Size("XL", 1024, 16, 16, 3072),
    "2B": Size("2B", 2048, 28, 16, 6144),  # Qwen3-1.7B's text decoder shape (vocab here: the tiny tokenizer's)
}


def build_model(tokenizer: Any, size: Size, dtype: torch.dtype, device: str) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        hidden_size=size.hidden, intermediate_size=size.intermediate, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, num_key_value_heads=max(1, size.heads // 2), head_dim=size.hidden // size.heads,
        vocab_size=len(tokenizer), max_position_embeddings=8192, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(config).to(dtype=dtype, device=device)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# -- prompts and replayed rollouts ---------------------------------------------------------------------------------

WORDS = ("the", "triangle", "has", "sides", "and", "angles", "so", "find", "value", "of", "x", "given", "that", "area",
         "is", "equal", "to", "product", "base", "height", "divided", "by", "two", "where", "each", "side", "length")


def rendered_prompt_tokens(tokenizer: Any, content: str) -> int:
    """Token count of one user message rendered with the chat template and the generation prompt."""
    return len(tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=True, return_dict=True)["input_ids"])


def make_prompts(tokenizer: Any, n: int, prompt_tokens: int, seed: int) -> list[dict[str, Any]]:
    """``n`` problems whose chat-rendered prompt is about ``prompt_tokens`` tokens, each with an integer answer."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words: list[str] = []
        text = ""
        while True:
            candidate = " ".join([*words, rng.choice(WORDS)])
            if rendered_prompt_tokens(tokenizer, candidate + " Find x.") > prompt_tokens:
                break
            words = candidate.split()
            text = candidate
        rows.append({"prompt": [{"role": "user", "content": (text or "Find") + " Find x."}],
                     "answer": str(10 + i)})
    return rows


class Replay:
    """Per generation round, the completions every method trains on (recorded from the first method's run)."""

    def __init__(self, tokenizer: Any, length: int, group: int) -> None:
        self.tokenizer = tokenizer
        self.length = length
        self.group = group
        self.rounds: dict[int, list[list[int]]] = {}

    def completions(self, round_index: int, generated: list[list[int]], answers: list[str]) -> list[list[int]]:
        if round_index not in self.rounds:
            out = []
            for j, (ids, answer) in enumerate(zip(generated, answers, strict=True)):
                shown = answer if j % 2 == 0 else str(int(answer) + 1 + (j % self.group))
                suffix = self.tokenizer(f" \\boxed{{{shown}}}", add_special_tokens=False)["input_ids"]
                body = [t for t in ids if t not in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)]
                body = body[: max(0, self.length - len(suffix) - 1)]
                out.append(body + suffix + [self.tokenizer.eos_token_id])
            self.rounds[round_index] = out
        return self.rounds[round_index]


# -- the timed trainer -------------------------------------------------------------------------------------------


def timed_trainer_class(timer: PhaseTimer, replay: Replay) -> type:
    """A CEPOTrainer subclass whose phases are charged to ``timer`` and whose completions are ``replay``'s."""
    from cepo.integrations.trl import CEPOTrainer
    from cepo.integrations.trl.rewards import completion_text

    class Timed(CEPOTrainer):
        _round = 0
        _in_score: str | None = None

        def _generate(self, prompts: list) -> Any:
            with timer.phase("generation"):
                out = list(super()._generate(prompts))
                answers = [self._current_answers[i] for i in range(len(prompts))]
                completion_ids = replay.completions(self._round, out[1], answers)
                self._round += 1
                out[1] = completion_ids
                texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
                if isinstance(out[3][0], list):
                    out[3] = [[{"role": "assistant", "content": t}] for t in texts]
                else:
                    out[3] = texts
                return tuple(out)

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
            self._current_answers = [str(x["answer"]) for x in inputs]
            with timer.phase("credit"):
                return super()._generate_and_score_completions(inputs)

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):  # type: ignore[override]
            assert completion_text(completions[0])  # the replayed completions reach the reward function
            with timer.phase("reward"):
                return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

        def _teacher_passes(self, *args: Any, **kwargs: Any) -> None:
            with timer.phase("teacher_build"):
                return super()._teacher_passes(*args, **kwargs)

        def _score(self, batch: Any, kind: str, real_rows: int) -> torch.Tensor:
            self._in_score = kind
            try:
                with timer.phase("teacher_forward" if kind == "teacher" else "student_forward"):
                    return super()._score(batch, kind, real_rows)
            finally:
                self._in_score = None

        def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any) -> Any:
            if self._in_score is None and not torch.is_grad_enabled():
                with timer.phase("old_logprobs"):
                    result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
                    _sync()
                    return result
            result = super()._get_per_token_logps_and_entropies(*args, **kwargs)
            if self._in_score is not None:
                _sync()
            return result

    return Timed


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def step_callback(timer: PhaseTimer) -> Any:
    from transformers import TrainerCallback

    class Steps(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync()
            timer.begin_step(rest="update")

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync()
            timer.end_step()

    return Steps()


# -- what-if: teacher rows that share a prompt share its prefix ------------------------------------------------------


@torch.no_grad()
def prefix_sharing_probe(model: Any, tokenizer: Any, data: Any, replay: Replay, cfg: Any, device: str,
                         repeats: int = 3) -> dict[str, Any]:
    """Time the r+ teacher rows of one replayed round scored as the engine does (``cepo.teacher``: every row is
    ``[teacher prompt] + response``) against a prefix-shared forward (the teacher prompt of a group run once, its
    KV cache repeated for the group's G responses), and check both give the same log-probs."""
    from cepo.teacher import build_teacher_inputs, teacher_logprobs, teacher_prompt_text

    model.eval()
    completions = replay.rounds[0]
    n = len(completions)
    messages = [data[i // cfg.group]["prompt"] for i in range(n)]
    hints = [str(data[i // cfg.group]["answer"]) for i in range(n)]
    width = max(len(c) for c in completions)
    response = torch.full((n, width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(response)
    for i, c in enumerate(completions):
        response[i, : len(c)] = torch.tensor(c)
        mask[i, : len(c)] = 1
    full = build_teacher_inputs(tokenizer, messages, hints, response, mask)

    def engine() -> torch.Tensor:
        out = teacher_logprobs(model, full, micro_batch_size=n)
        _sync()
        return out

    groups = n // cfg.group
    prompts = [teacher_prompt_text(tokenizer, messages[g * cfg.group], hints[g * cfg.group])[0] for g in range(groups)]
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
    prefix_ids, prefix_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    resp, resp_mask = response.to(device), mask.to(device)

    def shared() -> torch.Tensor:
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions, use_cache=True)
        cache = out.past_key_values
        cache.batch_repeat_interleave(cfg.group)
        first = out.logits[:, -1:].repeat_interleave(cfg.group, 0)
        attention = torch.cat([prefix_mask.repeat_interleave(cfg.group, 0), resp_mask], dim=1)
        start = prefix_mask.sum(-1, keepdim=True).repeat_interleave(cfg.group, 0)
        pos = start + torch.arange(resp.shape[1], device=resp.device)
        rest = model(input_ids=resp, attention_mask=attention, position_ids=pos, past_key_values=cache).logits
        logits = torch.cat([first, rest[:, :-1]], dim=1).float()
        logps = torch.log_softmax(logits, -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1) * resp_mask
        _sync()
        return logps

    reference, candidate = engine(), shared()
    times: dict[str, list[float]] = {"engine": [], "prefix_shared": []}
    for _ in range(repeats):
        for name, fn in (("engine", engine), ("prefix_shared", shared)):
            tic = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - tic)
    diff = float((reference.cpu() - candidate.cpu()).abs().max())
    engine_s, shared_s = min(times["engine"]), min(times["prefix_shared"])
    prefix_tokens = int(prefix_mask.sum()) / groups
    model.train()
    return {"rows": n, "group": cfg.group, "teacher_prompt_tokens": prefix_tokens, "response_tokens": width,
            "engine_seconds": engine_s, "prefix_shared_seconds": shared_s, "saving": 1 - shared_s / engine_s,
            "token_saving_bound": (cfg.group - 1) / cfg.group * prefix_tokens / (prefix_tokens + width),
            "max_abs_logp_diff": diff}


# -- one configuration --------------------------------------------------------------------------------------------


@dataclass
class Config:
    size: str
    length: int
    layout: str
    prompts: int
    group: int
    steps: int  # timed generation rounds per run (after one warm-up round)
    repeats: int = 2  # runs per method, in the order grpo rlsd cepo | cepo rlsd grpo | ...
    probe_prefix: bool = True


@dataclass
class TimedRun:
    """One timed training run of one method: per generation round after the warm-up round, its phase record."""

    rounds: list[dict[str, float]]
    wall_seconds: float
    peak_bytes: int
    peak_delta_bytes: int
    teacher_rows_per_round: float
    student_rows_per_round: float


def run_timed(trainer_class: type, timer: PhaseTimer, model: Any, args: Any, data: Any, processing_class: Any,
              device: str, peft_config: Any = None) -> tuple[TimedRun, Any]:
    """Train ``trainer_class`` (a :func:`timed_trainer_class`) for ``args.max_steps`` optimizer steps under
    :class:`PeakMemory`, and split the phase records (one per optimizer step) into generation rounds
    (``steps_per_generation / gradient_accumulation_steps`` optimizer steps each; the first round is warm-up and
    dropped). Returns the run and the trainer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from cepo.integrations.trl import make_math_reward

    trainer = trainer_class(model=model, reward_funcs=make_math_reward(), args=args, train_dataset=data,
                            processing_class=processing_class, callbacks=[step_callback(timer)],
                            peft_config=peft_config)
    for quiet in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(quiet)
    gc.collect()
    memory = PeakMemory(device)
    tic = time.perf_counter()
    with memory:
        trainer.train()
    wall = time.perf_counter() - tic
    per_generation = args.steps_per_generation // args.gradient_accumulation_steps  # optimizer steps per round
    steps = timer.steps
    per_round = [_sum_records(steps[i : i + per_generation]) for i in range(0, len(steps), per_generation)]
    timed = max(1, len(per_round) - 1)
    forwards = [e for e in trainer.forward_log if e.get("step", 0) >= per_generation]
    run = TimedRun(
        rounds=per_round[1:], wall_seconds=wall, peak_bytes=memory.peak_bytes, peak_delta_bytes=memory.delta_bytes,
        teacher_rows_per_round=sum(e["rows"] for e in forwards if e["kind"] == "teacher") / timed,
        student_rows_per_round=sum(e["rows"] for e in forwards if e["kind"] == "student") / timed,
    )
    return run, trainer


def summarize_runs(runs: list[TimedRun]) -> dict[str, Any]:
    """One method's result over its repeated runs: mean phases per timed round, and the smallest peak memory
    (the first run of a shape pays one-time allocations)."""
    timed = [r for run in runs for r in run.rounds]
    summary = {k: sum(r.get(k, 0.0) for r in timed) / len(timed) for k in sorted({k for r in timed for k in r})}
    return {
        "phases_per_round": summary,
        "round_totals": [r["total"] for r in timed],
        "rounds_timed": len(timed),
        "wall_seconds": [run.wall_seconds for run in runs],
        "peak_bytes": min(run.peak_bytes for run in runs),
        "peak_delta_bytes": min(run.peak_delta_bytes for run in runs),
        "teacher_rows_per_round": runs[0].teacher_rows_per_round,
        "student_rows_per_round": runs[0].student_rows_per_round,
    }


def free_memory(device: str) -> None:
    """Collect garbage and, on CUDA, return cached blocks (between runs, so each starts from the same state)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def run_config(cfg: Config, tokenizer: Any, device: str, dtype: torch.dtype, echo: bool = True) -> dict[str, Any]:
    from datasets import Dataset

    from cepo.integrations.trl import CEPOGRPOConfig

    size = SIZES[cfg.size]
    base = build_model(tokenizer, size, dtype, device)
    params = sum(p.numel() for p in base.parameters())
    prompt_tokens = max(24, round(cfg.length * 768 / 2048))
    rounds = cfg.steps + 1
    data = Dataset.from_list(make_prompts(tokenizer, cfg.prompts * rounds, prompt_tokens, seed=0))
    replay = Replay(tokenizer, cfg.length, cfg.group)
    probe: dict[str, Any] | None = None
    per_generation = 2 if cfg.layout == "paper" else 1
    rows = cfg.prompts * cfg.group
    collected: dict[str, list[TimedRun]] = {m: [] for m in METHODS}
    order = [m for r in range(cfg.repeats) for m in (METHODS if r % 2 == 0 else METHODS[::-1])]  # ABC CBA ...
    for method in order:
        timer = PhaseTimer()
        model = copy.deepcopy(base).train()
        args = CEPOGRPOConfig(
            output_dir="/tmp/cepo-overhead", use_cpu=device == "cpu", bf16=dtype == torch.bfloat16, fp16=False,
            per_device_train_batch_size=rows // per_generation, steps_per_generation=per_generation,
            gradient_accumulation_steps=1, num_generations=cfg.group, max_completion_length=cfg.length,
            generation_kwargs={"min_new_tokens": cfg.length}, learning_rate=1e-6, max_steps=rounds * per_generation,
            logging_steps=1, report_to="none", save_strategy="no", seed=0, disable_tqdm=True, shuffle_dataset=False,
            cepo_method=method, cepo_lambda_schedule="constant", cepo_lam0=0.5, cepo_eps_w=0.5,
        )
        run, trainer = run_timed(timed_trainer_class(timer, replay), timer, model, args, data, tokenizer, device)
        collected[method].append(run)
        if method == "cepo" and probe is None and cfg.probe_prefix:
            probe = prefix_sharing_probe(trainer.model, tokenizer, data, replay, cfg, device)
        del trainer, model
        free_memory(device)
    results = {method: summarize_runs(runs) for method, runs in collected.items()}
    if echo:
        for method, result in results.items():
            print(f"    {method:<5} {phase_line(result['phases_per_round'])}", flush=True)
    ratios = method_ratios(results)
    hinted = data[0]["prompt"][0]["content"] + "\n\nHere is a sample answer: 12"
    teacher_prompt = rendered_prompt_tokens(tokenizer, hinted)
    return {"config": asdict(cfg), "parameters": params, "rows_per_round": rows, "prompt_tokens": prompt_tokens,
            "teacher_prompt_tokens": teacher_prompt, "methods": results, "ratios": ratios, "prefix_sharing": probe}


def phase_line(summary: dict[str, float]) -> str:
    """``1.23 s/round  generation 0.50, update 0.40, ...`` (phases of at least 5 ms)."""
    return f"{summary['total']:.2f} s/round  " + ", ".join(
        f"{k} {v:.2f}" for k, v in summary.items() if k != "total" and v >= 0.005)


def _sum_records(records: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for record in records:
        for k, v in record.items():
            out[k] = out.get(k, 0.0) + v
    return out


def method_ratios(results: dict[str, Any]) -> dict[str, float | None]:
    """Every method against ``grpo`` (which ``results`` must hold): step time with and without generation, peak
    memory (and what training added to it), and the teacher passes over GRPO's old-log-prob pass."""
    def total(m: str, exclude: tuple[str, ...] = ()) -> float:
        phases = results[m]["phases_per_round"]
        return phases["total"] - sum(phases.get(k, 0.0) for k in exclude)

    out: dict[str, float | None] = {}
    for m in [m for m in results if m != "grpo"]:
        out[f"{m}_over_grpo_step"] = total(m) / total("grpo")
        out[f"{m}_over_grpo_step_without_generation"] = total(m, ("generation",)) / total("grpo", ("generation",))
        out[f"{m}_over_grpo_peak_memory"] = results[m]["peak_bytes"] / results["grpo"]["peak_bytes"]
        delta = results["grpo"]["peak_delta_bytes"]
        out[f"{m}_over_grpo_peak_memory_delta"] = results[m]["peak_delta_bytes"] / delta if delta > 0 else None
        phases = results[m]["phases_per_round"]
        teacher = phases.get("teacher_forward", 0.0) + phases.get("teacher_build", 0.0)
        old = results["grpo"]["phases_per_round"].get("old_logprobs", 0.0)
        out[f"{m}_teacher_over_old_pass"] = teacher / old if old > 0 else None
        out[f"{m}_teacher_forward_over_old_pass"] = phases.get("teacher_forward", 0.0) / old if old > 0 else None
    return out


# -- report -------------------------------------------------------------------------------------------------------


def print_table(configs: list[dict[str, Any]]) -> None:
    print()
    head = (f"{'size':<4} {'params':>7} {'len':>5} {'layout':<9} {'method':<5} {'round s':>8} {'gen':>6} {'old':>6} "
            f"{'t.build':>7} {'t.fwd':>6} {'stud':>6} {'update':>7} {'other':>6} {'vs grpo':>8} {'no-gen':>7} "
            f"{'teach/old':>9} {'mem':>6}")
    print(head)
    print("-" * len(head))
    for c in configs:
        cfg, ratios = c["config"], c["ratios"]
        for m, r in c["methods"].items():
            p = r["phases_per_round"]
            other = p.get("credit", 0.0) + p.get("reward", 0.0)
            vs = "" if m == "grpo" else f"{ratios[f'{m}_over_grpo_step']:.2f}x"
            nogen = "" if m == "grpo" else f"{ratios[f'{m}_over_grpo_step_without_generation']:.2f}x"
            t_old = ratios.get(f"{m}_teacher_over_old_pass") if m != "grpo" else None
            mem = "" if m == "grpo" else _ratio(ratios.get(f"{m}_over_grpo_peak_memory_delta"))
            print(f"{cfg['size']:<4} {c['parameters'] / 1e6:>6.2f}M {cfg['length']:>5} {cfg['layout']:<9} {m:<5} "
                  f"{p['total']:>8.2f} {p.get('generation', 0):>6.2f} {p.get('old_logprobs', 0):>6.2f} "
                  f"{p.get('teacher_build', 0):>7.3f} {p.get('teacher_forward', 0):>6.2f} "
                  f"{p.get('student_forward', 0):>6.2f} {p.get('update', 0):>7.2f} {other:>6.2f} {vs:>8} {nogen:>7} "
                  f"{_ratio(t_old):>9} {mem:>6}")
    probes = [c for c in configs if c.get("prefix_sharing")]
    if probes:
        print()
        print("what-if: r+ teacher rows scored with the group's teacher prompt run once (its KV cache shared by the "
              "group's G rows)")
        for c in probes:
            p = c["prefix_sharing"]
            print(f"  size {c['config']['size']}, response {c['config']['length']}: engine "
                  f"{p['engine_seconds']:.3f} s, prefix-shared {p['prefix_shared_seconds']:.3f} s "
                  f"(saving {p['saving']:.0%}, token bound {p['token_saving_bound']:.0%}); "
                  f"max |logp diff| {p['max_abs_logp_diff']:.1e}")
    print("round s: one rollout batch (generation + scoring + its optimizer steps); vs grpo: step-time ratio; "
          "no-gen: the same without generation;\nteach/old: teacher build + forward over GRPO's old-log-prob pass "
          "(paper layout); mem: peak RSS (CUDA: allocated) added by training, over GRPO's")


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def main(argv: list[str] | None = None) -> int:
    argv = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-reexec"]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="size S, lengths 32 and 128, paper layout, 1 round")
    parser.add_argument("--sizes", nargs="+", default=["S", "M"], choices=sorted(SIZES))
    parser.add_argument("--lengths", nargs="+", type=int, default=[32, 128, 512])
    parser.add_argument("--layouts", nargs="+", default=["paper", "on_policy"], choices=("paper", "on_policy"))
    parser.add_argument("--prompts", type=int, default=1, help="prompts per rollout batch")
    parser.add_argument("--no-paper-point", action="store_true",
                        help="skip the paper-proportion point (size S, prompt 768, response 2048, paper layout)")
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--steps", type=int, default=2, help="timed rollout batches per run (after 1 warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method (alternating order)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default=None, help="result file stem (default overhead[_quick|_<device>])")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.lengths, args.layouts, args.steps, args.repeats = ["S"], [32, 128], ["paper"], 1, 1
        args.no_paper_point = True
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    from cepo.testing import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    info = machine_info(args.device)
    print(machine_line(info), flush=True)
    tic = time.perf_counter()
    configs = []
    for layout in args.layouts:
        for size in args.sizes:
            for length in args.lengths:
                cfg = Config(size, length, layout, args.prompts, args.group, args.steps, args.repeats,
                             probe_prefix=layout == args.layouts[0])
                print(f"  size {size}, response {length} tokens, {layout} layout:", flush=True)
                configs.append(run_config(cfg, tokenizer, args.device, dtype))
    if not args.no_paper_point and args.device == "cpu" and "paper" in args.layouts:
        cfg = Config("S", 2048, "paper", args.prompts, args.group, 1, 1, probe_prefix=True)
        print("  paper proportions: size S, prompt 768, response 2048 tokens, paper layout:", flush=True)
        configs.append(run_config(cfg, tokenizer, args.device, dtype))
    print_table(configs)
    name = args.name or ("overhead_quick" if args.quick else "overhead" if args.device == "cpu" else
                         f"overhead_{args.device.split(':')[0]}")
    payload = {
        "benchmark": "overhead",
        "command": " ".join(["python", "benchmarks/overhead.py", *argv]),
        "machine": info,
        "engine": "cepo.integrations.trl.CEPOTrainer (TRL GRPOTrainer, HF generate), one process",
        "dtype": args.dtype,
        "lambda": 0.5,
        "sizes": {s: asdict(SIZES[s]) for s in args.sizes},
        "memory_measure": "CUDA max_memory_allocated" if args.device.startswith("cuda") else
        "sampled RSS with MALLOC_MMAP_THRESHOLD_=65536 (freed tensors leave the resident set)",
        "configs": configs,
        "seconds": time.perf_counter() - tic,
    }
    path = write_json(f"{name}.json", payload, Path(args.out_dir))
    print(f"\nwrote {path} in {payload['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
