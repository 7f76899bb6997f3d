"""Does CEPO learn faster? GRPO vs RLSD vs CEPO (and both with a constant lambda) on the TRL engine.

Every arm starts from the same warm start (the tiny Qwen3 of ``benchmarks/_arith.py`` on ``Compute (a+b)*c-d.``,
cached), trains with ``cepo.integrations.trl.CEPOTrainer`` under identical budgets (same prompts per step, rollouts
per prompt, steps, learning rate, seeds) and is evaluated on the same 1,000 held-out problems every 10 steps:
sampled accuracy (temperature 1, the paper's evaluation protocol; the primary metric) and greedy accuracy. The seeds
are shared across arms, so arm differences are paired.

Precondition, checked and reported first: GRPO itself must learn here (mean held-out accuracy over seeds above the
warm start at the end). On the correct-solutions warm start of ``credit_precision.py`` it does not: its policy
gradient is noise-dominated (the gradients of two batches of 128 rollouts are almost orthogonal) and every learning
rate we tried either left accuracy flat or lowered it. This warm start therefore imitates flawed solutions:
30% of the unhinted SFT targets contain one *slip* (one result's last digit off by 1 or 2, the later steps
consistent with it), hinted targets never do. The model learns to slip now and then (sampled accuracy about half
its greedy accuracy), a consistent failure mode that RL can remove, and the answer-conditioned teacher has learnt
not to slip; the slipped result is the decisive token.

Usage (writes ``benchmarks/results/learning.json`` and ``learning_curves.png``)::

    python benchmarks/learning.py           # full run: 5 arms x 3 seeds x 100 steps (~45 min on 2 CPU cores)
    python benchmarks/learning.py --quick   # grpo and cepo, 1 seed, 20 steps (~2 min once the warm start is cached)
    python benchmarks/learning.py --arms grpo opsd sdpo --name learning_distill   # the self-distillation baselines
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads crawl on a shared CPU

import argparse
import copy
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _arith import (
    DEFAULT_CACHE,
    RESULTS_DIR,
    WarmStartConfig,
    generate,
    load_or_train_warm_start,
    machine_info,
    machine_line,
    sample_problems,
    student_prompt,
    write_json,
)
from _plot import Series, line_chart

from cepo.analysis.credit_quality import bootstrap_counts, percentile_ci
from cepo.rewards import compute_score

# two-sided 95% Student t quantiles by degrees of freedom (no scipy needed)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        15: 2.131, 20: 2.086, 30: 2.042}


@dataclass(frozen=True)
class Arm:
    """One training arm: a method, its lambda schedule and (OPSD / SDPO) its ``cepo.distill`` settings."""

    name: str
    method: str
    schedule: str = "linear"
    lam0: float = 0.5
    warmup_steps: int = 25
    distill: tuple[tuple[str, Any], ...] = ()  # (key, value) of CEPOGRPOConfig's cepo_distill_<key>


# OPSD and SDPO with their authors' losses (configs/opsd.yaml, configs/sdpo.yaml), on the live teacher: these arms
# fine-tune every weight, and the fixed / EMA teachers of the YAMLs are LoRA adapters (the adapter disabled /
# averaged). SDPO's top-k is 20 here: the arithmetic vocabulary has about 45 tokens (its YAML: 100 of 151,936).
OPSD_DISTILL = (("mode", "full"), ("alpha", 0.5), ("is_clip", None), ("teacher", "live"))
SDPO_DISTILL = (("mode", "topk"), ("support", "student"), ("topk", 20), ("tail", True), ("alpha", 0.5),
                ("is_clip", 2.0), ("teacher", "live"))

ARMS = {
    "grpo": Arm("grpo", "grpo"),
    "rlsd": Arm("rlsd", "rlsd"),
    "cepo": Arm("cepo", "cepo"),
    "cepo_const": Arm("cepo_const", "cepo", schedule="constant"),
    "rlsd_const": Arm("rlsd_const", "rlsd", schedule="constant"),
    "opsd": Arm("opsd", "opsd", distill=OPSD_DISTILL),
    "sdpo": Arm("sdpo", "sdpo", distill=SDPO_DISTILL),
}


@dataclass
class Settings:
    """The shared budget of every arm."""

    arms: list[str] = field(default_factory=lambda: ["grpo", "rlsd", "cepo", "rlsd_const", "cepo_const"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 100
    prompts_per_step: int = 16
    group: int = 8
    lr: float = 3e-5
    lr_scheduler: str = "constant_with_warmup"
    warmup_steps: int = 5
    beta: float = 0.0
    eps_w: float = 0.5
    negative_reference: str = "paper"
    eval_every: int = 10
    eval_problems: int = 1000
    max_completion_length: int = 48
    slip_fraction: float = 0.3  # warm start: unhinted SFT targets with one slip (benchmarks/_arith.py)
    warm_start_steps: int = 1200


# -- evaluation ---------------------------------------------------------------------------------------------------


def evaluate(model: Any, tokenizer: Any, problems: list[Any], seed: int) -> dict[str, Any]:
    """Greedy and sampled (T = 1) correctness per held-out problem."""
    was_training = model.training
    model.eval()
    prompts = [student_prompt(tokenizer, p) for p in problems]
    out = {}
    for mode, greedy in (("greedy", True), ("sampled", False)):
        roll = generate(model, tokenizer, prompts, greedy=greedy, seed=seed, batch_size=500)
        out[mode] = [compute_score(t, p.answer).accuracy for t, p in zip(roll.texts, problems, strict=True)]
    if was_training:
        model.train()
    return out


def train_arm(arm: Arm, seed: int, settings: Settings, base_model: Any, tokenizer: Any, eval_set: list[Any],
              train_set: list[Any], workdir: Path, echo: bool = True) -> dict[str, Any]:
    """One CEPOTrainer run; returns the accuracy curve and the per-step TRL metrics."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer, make_math_reward

    model = copy.deepcopy(base_model)
    model.train()
    data = Dataset.from_list([{"prompt": p.messages(), "answer": p.answer} for p in train_set])
    args = CEPOGRPOConfig(
        output_dir=str(workdir / f"{arm.name}-{seed}"),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=settings.prompts_per_step * settings.group,
        num_generations=settings.group,
        max_completion_length=settings.max_completion_length,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.lr_scheduler,
        warmup_steps=settings.warmup_steps,
        beta=settings.beta,
        max_steps=settings.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=seed,
        data_seed=seed,
        temperature=1.0,
        disable_dropout=True,
        disable_tqdm=True,
        cepo_method=arm.method,
        cepo_lam0=arm.lam0,
        cepo_lambda_schedule=arm.schedule,
        cepo_warmup_steps=arm.warmup_steps,
        cepo_eps_w=settings.eps_w,
        cepo_negative_reference=settings.negative_reference,
        **{f"cepo_distill_{key}": value for key, value in arm.distill},
    )
    curve: list[dict[str, Any]] = []

    class Evaluate(TrainerCallback):
        def _run(self, step: int, model: Any) -> None:
            tic = time.perf_counter()
            result = evaluate(model, tokenizer, eval_set, seed=10_000)  # same draws at every step
            curve.append({"step": step, "greedy": float(np.mean(result["greedy"])),
                          "sampled": float(np.mean(result["sampled"])), "per_problem": result,
                          "seconds": time.perf_counter() - tic})
            if echo:
                print(f"  [{arm.name} seed {seed}] step {step:>3}: held-out greedy {curve[-1]['greedy']:.3f}, "
                      f"sampled {curve[-1]['sampled']:.3f}", flush=True)

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            self._run(0, model)

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            if state.global_step % settings.eval_every == 0 or state.global_step == state.max_steps:
                self._run(state.global_step, model)

    trainer = CEPOTrainer(model=model, reward_funcs=make_math_reward(), args=args, train_dataset=data,
                          processing_class=tokenizer, callbacks=[Evaluate()])
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for quiet in (PrinterCallback, ProgressCallback):  # one line per evaluation instead
        trainer.remove_callback(quiet)
    tic = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - tic
    logs = [h for h in trainer.state.log_history if "reward" in h]
    keep = ("reward", "step_time", "cepo/lambda", "cepo/teacher_seconds", "cepo/clip_rate", "entropy",
            "cepo/delta_pos_frac_adv_pos", "cepo/delta_neg_frac_adv_neg", "frac_reward_zero_std", "cepo/distill_loss")
    return {"arm": arm.name, "seed": seed, "curve": curve, "seconds": seconds,
            "train_logs": [{k: float(h[k]) for k in keep if k in h} for h in logs]}


# -- statistics ---------------------------------------------------------------------------------------------------


def t_interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% Student-t interval over seeds."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return {"mean": mean, "sd": 0.0, "ci_low": float("nan"), "ci_high": float("nan"), "n": int(x.size)}
    sd = float(x.std(ddof=1))
    q = T975.get(x.size - 1) or T975[max(k for k in T975 if k <= x.size - 1)]
    half = q * sd / math.sqrt(x.size)
    return {"mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half, "n": int(x.size)}


def paired_problem_bootstrap(a: list[list[float]], b: list[list[float]], n_boot: int = 2000,
                             seed: int = 0) -> dict[str, float]:
    """Mean over seeds of (a - b) per held-out problem, with a bootstrap over problems (seeds kept): the
    evaluation-sample part of the uncertainty only."""
    diff = np.mean(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64), axis=0)  # per problem
    counts = bootstrap_counts(diff.size, n_boot, seed)
    samples = counts @ diff / diff.size
    low, high = percentile_ci(samples)
    return {"mean": float(diff.mean()), "ci_low": low, "ci_high": high}


def analyse(runs: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """End accuracy per arm, the precondition, paired differences against GRPO, curves."""
    by_arm: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_arm.setdefault(run["arm"], {})[run["seed"]] = run
    seeds = sorted({r["seed"] for r in runs})
    out: dict[str, Any] = {"arms": {}, "paired_vs_grpo": {}, "curves": {}}
    for metric in ("greedy", "sampled"):
        start = [by_arm[a][s]["curve"][0][metric] for a in by_arm for s in by_arm[a]]
        out.setdefault("warm_start", {})[metric] = float(np.mean(start))
    for arm, per_seed in by_arm.items():
        entry: dict[str, Any] = {}
        for metric in ("greedy", "sampled"):
            ends = [per_seed[s]["curve"][-1][metric] for s in seeds if s in per_seed]
            gains = [per_seed[s]["curve"][-1][metric] - per_seed[s]["curve"][0][metric] for s in seeds
                     if s in per_seed]
            entry[f"end_{metric}"] = t_interval(ends)
            entry[f"gain_{metric}"] = t_interval(gains)
            entry[f"end_{metric}_per_seed"] = ends
            steps = [p["step"] for p in per_seed[seeds[0]]["curve"]]
            values = np.array([[p[metric] for p in per_seed[s]["curve"]] for s in seeds if s in per_seed])
            out["curves"].setdefault(metric, {})[arm] = {"step": steps, "mean": values.mean(0).tolist(),
                                                         "min": values.min(0).tolist(),
                                                         "max": values.max(0).tolist()}
        entry["seconds_mean"] = float(np.mean([per_seed[s]["seconds"] for s in per_seed]))
        entry["step_time_mean"] = float(np.mean([h.get("step_time", np.nan) for s in per_seed
                                                 for h in per_seed[s]["train_logs"]]))
        out["arms"][arm] = entry
    if "grpo" in by_arm:
        grpo = out["arms"]["grpo"]
        out["precondition_grpo_learns"] = {
            metric: {"gain": grpo[f"gain_{metric}"], "holds": grpo[f"gain_{metric}"]["mean"] > 0}
            for metric in ("greedy", "sampled")}
        for arm, per_seed in by_arm.items():
            if arm == "grpo":
                continue
            common = [s for s in seeds if s in per_seed and s in by_arm["grpo"]]
            entry = {}
            for metric in ("greedy", "sampled"):
                diffs = [per_seed[s]["curve"][-1][metric] - by_arm["grpo"][s]["curve"][-1][metric] for s in common]
                a = [per_seed[s]["curve"][-1]["per_problem"][metric] for s in common]
                b = [by_arm["grpo"][s]["curve"][-1]["per_problem"][metric] for s in common]
                # area under the curve (mean accuracy over the evaluation steps): "learns faster"
                auc = [float(np.mean([p[metric] for p in per_seed[s]["curve"]]))
                       - float(np.mean([p[metric] for p in by_arm["grpo"][s]["curve"]])) for s in common]
                entry[metric] = {"end_diff_seeds": t_interval(diffs), "end_diff_per_seed": diffs,
                                 "end_diff_problem_bootstrap": paired_problem_bootstrap(a, b),
                                 "curve_mean_diff_seeds": t_interval(auc)}
            out["paired_vs_grpo"][arm] = entry
    return out


def draw_curves(analysis: dict[str, Any], metric: str, path: Path, title: str) -> Path:
    series = []
    for arm, curve in analysis["curves"][metric].items():
        series.append(Series(arm, curve["step"], curve["mean"], curve["min"], curve["max"],
                             dashed=arm.endswith("_const")))
    return line_chart(series, path, title, "RL step", f"held-out {metric} accuracy",
                      hline=analysis["warm_start"][metric], hline_label="warm start")


def print_report(payload: dict[str, Any]) -> None:
    analysis, settings = payload["analysis"], payload["settings"]
    n_seeds = len(settings["seeds"])
    print()
    print(f"{settings['steps']} steps x {settings['prompts_per_step']} prompts x {settings['group']} rollouts, lr "
          f"{settings['lr']}, {n_seeds} seed(s), {settings['eval_problems']} held-out problems; warm start: greedy "
          f"{analysis['warm_start']['greedy']:.3f}, sampled {analysis['warm_start']['sampled']:.3f}")
    pre = analysis.get("precondition_grpo_learns")
    if pre:
        for metric, value in pre.items():
            g = value["gain"]
            print(f"precondition (GRPO learns, {metric}): gain {g['mean']:+.3f} (seeds: sd {g['sd']:.3f}) -> "
                  f"{'holds' if value['holds'] else 'FAILS'}")
    print()
    header = (f"{'arm':<12} {'end greedy':>20} {'gain greedy':>12} {'end sampled':>20} {'gain sampled':>13} "
              f"{'s/step':>7}")
    print(header)
    print("-" * len(header))
    for arm, e in analysis["arms"].items():
        print(f"{arm:<12} {_mean_sd(e['end_greedy']):>20} {e['gain_greedy']['mean']:>+12.3f} "
              f"{_mean_sd(e['end_sampled']):>20} {e['gain_sampled']['mean']:>+13.3f} {e['step_time_mean']:>7.2f}")
    if analysis["paired_vs_grpo"]:
        print()
        print("paired vs GRPO (same seeds): end-accuracy difference, 95% t-interval over seeds "
              "[and over held-out problems]; mean-over-curve difference")
        for arm, e in analysis["paired_vs_grpo"].items():
            parts = []
            for metric in ("greedy", "sampled"):
                d, p, c = e[metric]["end_diff_seeds"], e[metric]["end_diff_problem_bootstrap"], \
                    e[metric]["curve_mean_diff_seeds"]
                seeds_ci = f"[{d['ci_low']:+.3f},{d['ci_high']:+.3f}]" if d["n"] > 1 else "[n/a]"
                parts.append(f"{metric} {d['mean']:+.3f} {seeds_ci} [{p['ci_low']:+.3f},{p['ci_high']:+.3f}] "
                             f"curve {c['mean']:+.3f}")
            print(f"  {arm:<12} " + "; ".join(parts))


def _mean_sd(v: dict[str, float]) -> str:
    return f"{v['mean']:.3f} ± {v['sd']:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="grpo and cepo, one seed, 20 steps, 300 eval problems")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS), help="arms to run (default: grpo rlsd cepo "
                        "cepo_const)")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--prompts-per-step", type=int)
    parser.add_argument("--group", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--lr-scheduler", help="transformers scheduler name (constant_with_warmup, cosine, ...)")
    parser.add_argument("--beta", type=float, help="KL coefficient (TRL beta)")
    parser.add_argument("--eval-every", type=int)
    parser.add_argument("--eval-problems", type=int)
    parser.add_argument("--slip-fraction", type=float, help="warm start: share of unhinted targets with a slip")
    parser.add_argument("--negative-reference", choices=("paper", "own_answer", "most_frequent"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default=None, help="result file stem (default learning[_quick])")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings()
    if args.quick:
        settings.arms, settings.seeds, settings.steps = ["grpo", "cepo"], [0], 20
        settings.eval_every, settings.eval_problems = 10, 300
    for key in ("arms", "seeds", "steps", "prompts_per_step", "group", "lr", "lr_scheduler", "beta", "eval_every",
                "eval_problems", "negative_reference", "slip_fraction"):
        value = getattr(args, key)
        if value is not None:
            setattr(settings, key, value)
    name = args.name or ("learning_quick" if args.quick else "learning")
    tic = time.perf_counter()
    info = machine_info("cpu")
    print(machine_line(info), flush=True)
    import transformers

    transformers.logging.set_verbosity_error()
    warm_config = WarmStartConfig(steps=settings.warm_start_steps, slip_fraction=settings.slip_fraction)
    model, tokenizer, warm = load_or_train_warm_start(warm_config, Path(args.cache_dir))
    eval_set = sample_problems(settings.eval_problems, seed=20_000, held_out=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in settings.seeds:
            train_set = sample_problems(settings.steps * settings.prompts_per_step, seed=30_000 + seed,
                                        held_out=False)
            for arm_name in settings.arms:
                print(f"arm {arm_name}, seed {seed}", flush=True)
                runs.append(train_arm(ARMS[arm_name], seed, settings, model, tokenizer, eval_set, train_set,
                                      Path(tmp)))
    analysis = analyse(runs, settings)
    out_dir = Path(args.out_dir)
    figure = draw_curves(analysis, "greedy", out_dir / f"{name}_curves.png",
                         "Held-out greedy accuracy (mean over seeds, band = min..max)")
    figure_sampled = draw_curves(analysis, "sampled", out_dir / f"{name}_curves_sampled.png",
                                 "Held-out sampled (T = 1) accuracy (mean over seeds, band = min..max)")
    for run in runs:  # per-problem results are in the analysis; keep the file small
        for point in run["curve"]:
            point.pop("per_problem", None)
    payload = {
        "benchmark": "learning",
        "command": " ".join(["python", "benchmarks/learning.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": info,
        "engine": "cepo.integrations.trl.CEPOTrainer (TRL GRPOTrainer), CPU, fp32, full fine-tuning",
        "warm_start": warm,
        "settings": asdict(settings),
        "arms": {a: asdict(ARMS[a]) for a in settings.arms},
        "analysis": analysis,
        "runs": runs,
        "figures": [str(figure), str(figure_sampled)],
        "seconds": time.perf_counter() - tic,
    }
    print_report(payload)
    path = write_json(f"{name}.json", payload, out_dir)
    print(f"\nwrote {path}, {figure.name}, {figure_sampled.name} in {payload['seconds'] / 60:.1f} min")
    json.dumps(payload["analysis"])  # fail here, not later, if something is not serialisable
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
