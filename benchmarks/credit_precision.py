"""Does token credit land on the decisive tokens? RLSD vs CEPO (paper Proposition 1, Figs. 4 and 5).

A controlled task where we know which tokens decide the answer: ``Compute (a+b)*c-d.`` solved as
``a+b=s. s*c=p. p-d=r. \\boxed{r}`` (``benchmarks/_arith.py``). The results ``s``, ``p``, ``r`` are decisive;
restated operands, operators and the format are filler; in a wrong response the first token that departs from the
correct solution is *the* error. A tiny Qwen3-shaped model is warm-started by supervised training on correct
solutions, 40% of them with the teacher hint in the paper's Appendix B template (cached after the first run). Then:
groups of rollouts are sampled and verified, and the token weights of RLSD and CEPO are computed with the code the
engines use (``cepo.teacher`` for the contexts, ``cepo.algorithms`` for r-, Eq. 1, the deltas and Eq. 7). Reported
per method, with 95% bootstrap intervals over problems:

* AUROC of ``|log w_t|`` and of the modulation factor ``A_t / A`` for decisive vs filler tokens, split by correct
  and wrong responses (GRPO: 0.5 by construction);
* for wrong responses, how often the first wrong result is the top-1 / top-3 token by weight (blame);
* the Fig. 4 sign fractions of the delta, the clip rate, the mean delta per token kind;
* CEPO once per ``negative_reference`` (paper, own_answer, most_frequent);
* a Fig. 5-style PNG of one correct and one wrong response (RLSD vs CEPO).

Usage (writes ``benchmarks/results/credit_precision.json`` and ``credit_precision_fig5.png``)::

    python benchmarks/credit_precision.py            # ~5 min on 2 CPU cores, warm start included (cached after)
    python benchmarks/credit_precision.py --quick    # fewer problems and bootstrap replicates

On your own model and data (GPU if present; decisive = numbers right after an ``=``, a proxy; no first-error
statistics without reference solutions)::

    python benchmarks/credit_precision.py --model Qwen/Qwen3-1.7B --data problems.parquet \\
        --problem-column problem --answer-column answer --max-new-tokens 1024
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads crawl on a shared CPU

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _arith import (
    DEFAULT_CACHE,
    RESULTS_DIR,
    Rollouts,
    WarmStartConfig,
    accuracy,
    context_logprobs,
    generate,
    load_or_train_warm_start,
    machine_info,
    machine_line,
    sample_problems,
    write_json,
)
from _plot import HeatmapRow, token_heatmap

from cepo.algorithms import (
    CreditInputs,
    compute_token_advantages,
    contrastive_delta,
    evidence_weights,
    group_advantages,
    negative_hints,
    rlsd_delta,
)
from cepo.analysis.credit_quality import (
    bootstrap_auroc,
    bootstrap_counts,
    bootstrap_mean,
    char_to_token,
    estimate,
    first_divergence,
    result_char_spans,
    token_char_spans,
    tokens_in_spans,
    topk_hit_probability,
)
from cepo.rewards import compute_score, extract_answer

REFERENCES = ("paper", "own_answer", "most_frequent")
KIND_NAMES = ("result 1 (s)", "result 2 (p)", "result 3+ (r)", "boxed answer", "other filler")


@dataclass
class Problem:
    """A problem of any source: its conversation, ground-truth answer and (arithmetic task only) solution."""

    messages: list[dict[str, Any]]
    answer: str
    solution: str | None = None


# -- data ---------------------------------------------------------------------------------------------------------


def arithmetic_problems(n: int, seed: int) -> list[Problem]:
    return [Problem(p.messages(), p.answer, p.solution) for p in sample_problems(n, seed=seed, held_out=False)]


def parquet_problems(path: str, n: int, problem_column: str, answer_column: str, instruction: str) -> list[Problem]:
    import pandas as pd

    frame = pd.read_parquet(path)
    for column in (problem_column, answer_column):
        if column not in frame.columns:
            raise SystemExit(f"{path} has no column {column!r} (columns: {list(frame.columns)}); "
                             "pass --problem-column / --answer-column")
    rows = frame.head(n)
    out = []
    for problem, answer in zip(rows[problem_column], rows[answer_column], strict=True):
        if isinstance(answer, list | tuple | np.ndarray):
            answer = answer[0] if len(answer) == 1 else answer
        text = str(problem) + (f" {instruction}" if instruction else "")
        out.append(Problem([{"role": "user", "content": text}], str(answer)))
    return out


# -- per-token bookkeeping ----------------------------------------------------------------------------------------


@dataclass
class TokenTable:
    """One entry per response token of the rows that receive credit (A != 0)."""

    row: np.ndarray
    pos: np.ndarray
    cluster: np.ndarray
    correct: np.ndarray  # token of a correct response (A > 0)
    wrong: np.ndarray  # token of a wrong response with A < 0 (a wrong one with A > 0, beaten only on format, is
    # in neither split)
    decisive: np.ndarray
    kind: np.ndarray  # index into KIND_NAMES


def label_rows(tokenizer: Any, rollouts: Rollouts, problems: list[Problem], group_of: list[int],
               rows: list[int]) -> tuple[dict[int, np.ndarray], dict[int, int | None], dict[int, bool]]:
    """Per row: the token kinds, the first-error token (wrong responses of the arithmetic task) and whether that
    error is a result token."""
    kinds: dict[int, np.ndarray] = {}
    first_error: dict[int, int | None] = {}
    error_is_result: dict[int, bool] = {}
    eos_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    for i in rows:
        ids = rollouts.row_ids(i)
        content = ids[:-1] if ids and ids[-1] in eos_ids else ids
        spans = token_char_spans(tokenizer, content)
        text = tokenizer.decode(content)
        results = result_char_spans(text)
        boxed_at = text.rfind("\\boxed{")
        boxed = [(boxed_at + 7, text.find("}", boxed_at) if text.find("}", boxed_at) >= 0 else len(text))] \
            if boxed_at >= 0 else []
        in_result = tokens_in_spans(spans, results)
        in_boxed = tokens_in_spans(spans, boxed)
        kind = np.full(len(ids), 4, dtype=np.int64)
        for t in range(len(content)):
            if in_result[t] >= 0:
                kind[t] = min(int(in_result[t]), 2)
            elif in_boxed[t] >= 0:
                kind[t] = 3
        kinds[i] = kind
        solution = problems[group_of[i]].solution
        if solution is not None:
            where = first_divergence(text, solution)
            if where is None:
                first_error[i] = None
            elif where >= len(text) and len(content) < len(ids):
                first_error[i] = len(ids) - 1  # stopped early: the EOS token is the error
            else:
                first_error[i] = char_to_token(spans, where)
            error_is_result[i] = first_error[i] is not None and first_error[i] < len(content) \
                and in_result[first_error[i]] >= 0
    return kinds, first_error, error_is_result


# -- the measurement ----------------------------------------------------------------------------------------------


def method_arrays(method: str, adv: torch.Tensor, mask: torch.Tensor, lam: float, eps_w: float,
                  logp_s: torch.Tensor, logp_pos: torch.Tensor, logp_neg: torch.Tensor | None,
                  has_neg: torch.Tensor | None) -> dict[str, Any]:
    """Delta, unclipped weight w, factor A_t / A and the engine's credit metrics for one method."""
    if method == "grpo":
        inputs = CreditInputs(adv, mask, lam, eps_w)
        token_adv, metrics = compute_token_advantages("grpo", inputs)
        delta = torch.zeros_like(token_adv)
    else:
        inputs = CreditInputs(adv, mask, lam, eps_w, logp_student=logp_s, logp_pos=logp_pos,
                              logp_neg=logp_neg if method == "cepo" else None,
                              has_negative=has_neg if method == "cepo" else None)
        token_adv, metrics = compute_token_advantages(method, inputs)
        if method == "rlsd":
            delta = rlsd_delta(logp_pos, logp_s, mask)
        else:
            delta = contrastive_delta(logp_pos, logp_neg, logp_s, has_neg, mask)
    weight = evidence_weights(adv, delta)
    safe = torch.where(adv == 0, torch.ones_like(adv), adv)
    factor = token_adv / safe.unsqueeze(-1)
    return {"delta": delta.numpy(), "weight": weight.numpy(), "factor": factor.numpy(), "metrics": metrics}


@dataclass
class Baseline:
    """RLSD's point estimates and bootstrap replicates, for paired differences (same replicates)."""

    points: dict[str, float]
    samples: dict[str, np.ndarray]


def summarise(arrays: dict[str, Any], table: TokenTable, first_error: dict[int, int | None],
              error_is_result: dict[int, bool], wrong_rows: list[int], counts: np.ndarray,
              baseline: Baseline | None) -> tuple[dict[str, Any], Baseline]:
    """Every reported number of one method (point estimates and bootstrap intervals)."""
    delta = arrays["delta"][table.row, table.pos]
    weight = arrays["weight"][table.row, table.pos]
    factor = arrays["factor"][table.row, table.pos]
    logw = np.abs(np.log(np.clip(weight, 1e-30, None)))
    ones = np.ones((1, counts.shape[1]))
    out: dict[str, Any] = {}
    samples: dict[str, np.ndarray] = {}
    points: dict[str, float] = {}
    lengths = np.bincount(table.row, minlength=arrays["weight"].shape[0])
    cluster_of_row = dict(zip(table.row.tolist(), table.cluster.tolist(), strict=False))
    for split, select in (("correct", table.correct), ("wrong", table.wrong)):
        for name, score in (("auroc_abs_log_w", logw), ("auroc_factor", factor)):
            key = f"{name}_{split}"
            s, y, c = score[select], table.decisive[select], table.cluster[select]
            point = float(bootstrap_auroc(s, y, c, ones)[0])
            boot = bootstrap_auroc(s, y, c, counts)
            samples[key], points[key] = boot, point
            out[key] = estimate(point, boot)
            if baseline is not None and key in baseline.samples:
                out[key]["diff_vs_rlsd"] = estimate(point - baseline.points[key], boot - baseline.samples[key])
        for k, step in enumerate(("s", "p", "r")):  # one result step vs the filler
            sel = select & ((table.kind == k) | ~table.decisive)
            key = f"auroc_abs_log_w_{split}_result_{step}"
            s, y, c = logw[sel], table.kind[sel] == k, table.cluster[sel]
            out.setdefault("auroc_abs_log_w_by_result", {})[f"{split}: {step}"] = estimate(
                float(bootstrap_auroc(s, y, c, ones)[0]), bootstrap_auroc(s, y, c, counts))
        for k, name in enumerate(KIND_NAMES):
            sel = select & (table.kind == k)
            out.setdefault("mean_delta_by_kind", {})[f"{split}: {name}"] = float(delta[sel].mean()) if sel.any() \
                else None
    # first wrong result: top-1 / top-3 by weight (blame) among its response's tokens
    eligible = [i for i in wrong_rows if error_is_result.get(i)]
    if eligible:
        for k in (1, 3):
            hits, chance = [], []
            for i in eligible:
                n = int(lengths[i])
                w_row = arrays["weight"][i, :n]
                hits.append(topk_hit_probability(w_row, int(first_error[i]), k))
                chance.append(min(1.0, k / n))
            clusters = [cluster_of_row[i] for i in eligible]
            boot = bootstrap_mean(hits, clusters, counts)
            key = f"first_error_top{k}"
            point = float(np.mean(hits))
            samples[key], points[key] = boot, point
            out[key] = estimate(point, boot)
            out[key]["chance"] = float(np.mean(chance))
            if baseline is not None and key in baseline.samples:
                out[key]["diff_vs_rlsd"] = estimate(point - baseline.points[key], boot - baseline.samples[key])
        out["first_error_responses"] = len(eligible)
    metrics = arrays["metrics"]
    out["fig4_sign_fractions"] = {k: metrics[k] for k in metrics if k.startswith("delta_") and "frac" in k}
    out["clip_rate"] = metrics.get("clip_rate")
    out["weight_mean"] = metrics.get("weight_mean")
    return out, Baseline(points, samples)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the JSON payload."""
    tic = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info(device)
    print(machine_line(info), flush=True)
    user_model = args.model is not None
    warm_info: dict[str, Any] = {}
    if user_model:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
        if args.data is None:
            raise SystemExit("--model needs --data (a parquet with problem and answer columns)")
        problems = parquet_problems(args.data, args.problems, args.problem_column, args.answer_column,
                                    args.instruction)
    else:
        warm = WarmStartConfig(slip_fraction=0.3 if args.warm_start == "slip" else 0.0)
        model, tokenizer, warm_info = load_or_train_warm_start(warm, Path(args.cache_dir), progress=not args.no_bar)
        model = model.to(device).eval()
        problems = arithmetic_problems(args.problems, seed=args.seed)
    setup_seconds = time.perf_counter() - tic
    if args.batch_size is None:
        args.batch_size = 64 if user_model else 512
    if args.micro_batch_size is None:  # teacher_logprobs materialises (rows, T, vocab) float32 logits
        per_row = (args.max_new_tokens + 64) * len(tokenizer) * 4
        args.micro_batch_size = int(max(1, min(256, 2e9 // per_row)))

    # 1. does the answer-conditioned teacher use the hint?
    check: dict[str, Any] = {}
    if not user_model:
        held_out = sample_problems(args.check_problems, seed=args.seed + 7, held_out=True)
        check["greedy_accuracy_unhinted"] = accuracy(model, tokenizer, held_out)
        check["greedy_accuracy_hinted"] = accuracy(model, tokenizer, held_out, hinted=True)
        check["sampled_accuracy_unhinted"] = accuracy(model, tokenizer, held_out, greedy=False, seed=args.seed)
        check["sampled_accuracy_hinted"] = accuracy(model, tokenizer, held_out, hinted=True, greedy=False,
                                                    seed=args.seed)
        check["held_out_problems"] = len(held_out)

    # 2. rollouts in groups, verified
    tic_roll = time.perf_counter()
    g = args.group
    prompts, group_of = [], []
    for index, problem in enumerate(problems):
        text = tokenizer.apply_chat_template(problem.messages, add_generation_prompt=True, tokenize=False)
        prompts += [text] * g
        group_of += [index] * g
    rollouts = generate(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, seed=args.seed,
                        batch_size=args.batch_size)
    scores = [compute_score(t, problems[group_of[i]].answer) for i, t in enumerate(rollouts.texts)]
    rewards = torch.tensor([s.overall for s in scores], dtype=torch.float32)
    correct_row = np.array([s.accuracy == 1.0 for s in scores])
    answers = [extract_answer(t) for t in rollouts.texts]
    adv = group_advantages(rewards, group_of)
    active = [i for i in range(len(prompts)) if float(adv[i]) != 0.0]
    mask = rollouts.mask.clone()
    mask[[i for i in range(len(prompts)) if float(adv[i]) == 0.0]] = 0  # rows without credit take no part

    # 3. log-probs: student, r+, and r- of every reference (each distinct (row, hint) scored once)
    messages = [problems[group_of[i]].messages for i in range(len(prompts))]
    logp_s = context_logprobs(model, tokenizer, messages, [None] * len(prompts), rollouts, rows=active,
                              micro_batch_size=args.micro_batch_size)
    pos_hints = [problems[group_of[i]].answer for i in range(len(prompts))]
    logp_pos = context_logprobs(model, tokenizer, messages, pos_hints, rollouts, rows=active,
                                micro_batch_size=args.micro_batch_size)
    neg: dict[str, tuple[torch.Tensor, torch.Tensor, list[str | None]]] = {}
    scored: dict[tuple[int, str], torch.Tensor] = {}
    for reference in REFERENCES:
        hints, has = negative_hints(answers, rewards, group_of, 0.5, True, reference)
        need = [i for i in active if has[i] and (i, str(hints[i])) not in scored]
        if need:
            values = context_logprobs(model, tokenizer, messages, [hints[i] if i in set(need) else None
                                                                   for i in range(len(prompts))],
                                      rollouts, rows=need, micro_batch_size=args.micro_batch_size)
            for i in need:
                scored[(i, str(hints[i]))] = values[i]
        logp_neg = torch.zeros_like(logp_s)
        for i in active:
            if has[i]:
                logp_neg[i] = scored[(i, str(hints[i]))]
        neg[reference] = (logp_neg, torch.tensor(has, dtype=torch.bool), hints)
    score_seconds = time.perf_counter() - tic_roll

    # 4. token labels
    kinds, first_error, error_is_result = label_rows(tokenizer, rollouts, problems, group_of, active)
    rows_idx, pos_idx = [], []
    for i in active:
        n = int(rollouts.mask[i].sum())
        rows_idx += [i] * n
        pos_idx += list(range(n))
    rows_arr, pos_arr = np.array(rows_idx, dtype=np.int64), np.array(pos_idx, dtype=np.int64)
    kind_arr = np.array([kinds[r][p] for r, p in zip(rows_arr, pos_arr, strict=True)], dtype=np.int64)
    negative_row = np.array([float(a) < 0 for a in adv])
    table = TokenTable(rows_arr, pos_arr, np.array(group_of)[rows_arr], correct_row[rows_arr],
                       ~correct_row[rows_arr] & negative_row[rows_arr], kind_arr <= 2, kind_arr)
    wrong_rows = [i for i in active if float(adv[i]) < 0 and not correct_row[i]]

    # teacher check on the sampled responses: log P_T+ - log P_S on correct responses
    correct_sel = table.correct
    gap = (logp_pos - logp_s).numpy()[table.row, table.pos]
    counts = bootstrap_counts(len(problems), args.boot, seed=args.seed)
    check["logp_pos_minus_student_correct"] = estimate(
        float(gap[correct_sel].mean()), bootstrap_mean(gap[correct_sel], table.cluster[correct_sel], counts))
    check["logp_pos_minus_student_correct_by_kind"] = {
        name: float(gap[correct_sel & (table.kind == k)].mean()) if (correct_sel & (table.kind == k)).any() else None
        for k, name in enumerate(KIND_NAMES)}

    # 5. methods
    lam, eps_w = args.lam, args.eps_w
    variants: dict[str, dict[str, Any]] = {}
    arrays_by: dict[str, dict[str, Any]] = {}
    baseline: Baseline | None = None
    for name, method, reference in [("grpo", "grpo", None), ("rlsd", "rlsd", None)] + [
            (f"cepo[{r}]", "cepo", r) for r in REFERENCES]:
        logp_neg, has_neg, _ = neg[reference or "paper"]
        arrays = method_arrays(method, adv, mask, lam, eps_w, logp_s, logp_pos, logp_neg, has_neg)
        summary, own = summarise(arrays, table, first_error, error_is_result, wrong_rows, counts,
                                 baseline if method == "cepo" else None)
        if method == "cepo":
            summary["has_negative_frac"] = float(has_neg[active].float().mean())
        if name == "rlsd":
            baseline = own
        variants[name] = summary
        arrays_by[name] = arrays

    # r- vs the wrong response's own answer (what the paper's tie-break decides)
    paper_hints = neg["paper"][2]
    wrong_with_answer = [i for i in wrong_rows if answers[i] is not None]
    same = [paper_hints[i] == answers[i] for i in wrong_with_answer]
    population = {
        "problems": len(problems),
        "rollouts": len(prompts),
        "group_size": g,
        "rollout_accuracy": float(correct_row.mean()),
        "rows_with_credit": len(active),
        "correct_rows_with_credit": int(sum(correct_row[i] for i in active)),
        "wrong_rows_with_credit": len(wrong_rows),
        "wrong_rows_with_positive_advantage": int(sum(not correct_row[i] and float(adv[i]) > 0 for i in active)),
        "response_tokens_with_credit": len(rows_arr),
        "decisive_token_frac": float(table.decisive.mean()),
        "wrong_rows_first_error_in_result": int(sum(bool(error_is_result.get(i)) for i in wrong_rows)),
        "paper_r_minus_equals_own_answer_frac": float(np.mean(same)) if same else None,
    }

    figure = None
    if not user_model:
        figure = draw_figure(tokenizer, rollouts, arrays_by, active, correct_row, kinds, first_error, error_is_result,
                             paper_hints, answers, adv, eps_w, Path(args.out_dir) / f"{args.name}_fig5.png")
    payload = {
        "benchmark": "credit_precision",
        "command": " ".join(["python", "benchmarks/credit_precision.py", *sys.argv[1:]]),
        "machine": info,
        "model": args.model or f"warm-started tiny Qwen3 (benchmarks/_arith.py), warm start: {args.warm_start}",
        "data": args.data or "arithmetic (a+b)*c-d, training split",
        "warm_start": warm_info,
        "settings": {"lam": lam, "eps_w": eps_w, "group": g, "problems": len(problems), "bootstrap": args.boot,
                     "seed": args.seed, "temperature": 1.0, "max_new_tokens": args.max_new_tokens,
                     "decisive": "digits of each result (number right after '=')"},
        "teacher_check": check,
        "population": population,
        "methods": variants,
        "figure": _display_path(figure) if figure else None,
        "seconds": {"setup_incl_warm_start": setup_seconds, "sampling_and_scoring": score_seconds,
                    "total": time.perf_counter() - tic},
    }
    return payload


def draw_figure(tokenizer: Any, rollouts: Rollouts, arrays_by: dict[str, dict[str, Any]], active: list[int],
                correct_row: np.ndarray, kinds: dict[int, np.ndarray], first_error: dict[int, int | None],
                error_is_result: dict[int, bool], paper_hints: list[str | None], answers: list[str | None],
                adv: torch.Tensor, eps_w: float, path: Path) -> Path | None:
    """One correct and one wrong response (first error at a result, r- different from its own answer), RLSD vs
    CEPO (paper and own_answer r-); colour = log w_t scaled to the clip range."""
    correct = next((i for i in active if correct_row[i]), None)
    wrong_rows = [i for i in active if not correct_row[i] and float(adv[i]) < 0 and error_is_result.get(i)]
    wrong = next((i for i in wrong_rows if answers[i] is not None and paper_hints[i] != answers[i]), None)
    if wrong is None:
        wrong = wrong_rows[0] if wrong_rows else None
    if correct is None or wrong is None:
        return None
    scale = np.log(1 + eps_w)
    rows = []
    for i, label in ((correct, "correct"), (wrong, "wrong")):
        ids = rollouts.row_ids(i)
        tokens = [tokenizer.decode([t]) for t in ids]
        decisive = {t for t in range(len(ids)) if kinds[i][t] <= 2}
        boxed = {first_error[i]} if first_error.get(i) is not None else set()
        for name in ("rlsd", "cepo[paper]", "cepo[own_answer]"):
            if label == "correct" and name == "cepo[own_answer]":
                continue  # identical to cepo[paper] for an accepted rollout
            w = arrays_by[name]["weight"][i, : len(ids)]
            values = np.clip(np.log(w) / scale, -1, 1)
            clip = float(np.mean((w < 1 - eps_w) | (w > 1 + eps_w)))
            note = f"A={float(adv[i]):+.2f}, clip {clip:.0%}"
            if label == "wrong" and name != "rlsd":
                hint = paper_hints[i] if name == "cepo[paper]" else answers[i]
                note += f", r-={hint}"
            rows.append(HeatmapRow(f"{label}: {name}", tokens, values.tolist(), decisive, boxed, note))
    return token_heatmap(
        rows, path, "Token weights w_t = exp(sign(A) * delta_t): RLSD vs CEPO (arithmetic task)",
        f"green: w > 1 (more credit on a correct response, more blame on a wrong one), red: w < 1, full colour at "
        f"the clip bounds 1 +/- {eps_w}; underlined: decisive (results); boxed: first error",
    )


def print_report(payload: dict[str, Any]) -> None:
    check, pop = payload["teacher_check"], payload["population"]
    print()
    if "greedy_accuracy_unhinted" in check:
        print(f"teacher check ({check['held_out_problems']} held-out problems): greedy accuracy "
              f"{check['greedy_accuracy_unhinted']:.1%} unhinted vs {check['greedy_accuracy_hinted']:.1%} hinted; "
              f"sampled {check['sampled_accuracy_unhinted']:.1%} vs {check['sampled_accuracy_hinted']:.1%}")
    gap = check["logp_pos_minus_student_correct"]
    print(f"mean log P_T+ - log P_S on correct responses: {gap['value']:+.3f} "
          f"[{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}]  by kind: "
          + ", ".join(f"{k} {v:+.2f}" for k, v in check["logp_pos_minus_student_correct_by_kind"].items()
                      if v is not None))
    print(f"{pop['problems']} problems x {pop['group_size']} rollouts, rollout accuracy {pop['rollout_accuracy']:.1%}; "
          f"{pop['rows_with_credit']} rows with A != 0 ({pop['correct_rows_with_credit']} correct, "
          f"{pop['wrong_rows_with_credit']} wrong, {pop['wrong_rows_first_error_in_result']} of them with the first "
          f"error at a result); paper r- = own answer for {_pct(pop['paper_r_minus_equals_own_answer_frac'])} "
          "of wrong rows")
    print()
    header = (f"{'method':<20} {'AUROC|logw| corr':>17} {'AUROC|logw| wrong':>18} {'AUROC fac corr':>15} "
              f"{'AUROC fac wrong':>16} {'err top1':>9} {'err top3':>9} {'clip':>6}")
    print(header)
    print("-" * len(header))
    for name, m in payload["methods"].items():
        print(f"{name:<20} {_ci(m['auroc_abs_log_w_correct']):>17} {_ci(m['auroc_abs_log_w_wrong']):>18} "
              f"{_ci(m['auroc_factor_correct']):>15} {_ci(m['auroc_factor_wrong']):>16} "
              f"{_ci(m.get('first_error_top1')):>9} {_ci(m.get('first_error_top3')):>9} "
              f"{_pct(m['clip_rate']):>6}")
    print()
    print("AUROC |log w| of one result step vs filler (correct | wrong):")
    for name, m in payload["methods"].items():
        if name == "grpo":
            continue
        by = m["auroc_abs_log_w_by_result"]
        print(f"  {name:<18} " + ", ".join(f"{step}: {_ci(by[f'correct: {step}'])} | {_ci(by[f'wrong: {step}'])}"
                                           for step in ("s", "p", "r")))
    top1 = payload["methods"]["grpo"].get("first_error_top1")
    if top1:
        print(f"(chance for the first error: top-1 {top1['chance']:.3f}, "
              f"top-3 {payload['methods']['grpo']['first_error_top3']['chance']:.3f})")
    print()
    print(f"{'Fig. 4 sign fractions':<20} {'D>0 | A>0':>10} {'D<0 | A>0':>10} {'D>0 | A<0':>10} {'D<0 | A<0':>10}")
    for name, m in payload["methods"].items():
        f = m["fig4_sign_fractions"]
        if not f:
            continue
        print(f"{name:<20} {f['delta_pos_frac_adv_pos']:>10.3f} {f['delta_neg_frac_adv_pos']:>10.3f} "
              f"{f['delta_pos_frac_adv_neg']:>10.3f} {f['delta_neg_frac_adv_neg']:>10.3f}")
    print()
    print("mean delta by token kind (correct | wrong responses):")
    for name, m in payload["methods"].items():
        if name == "grpo":
            continue
        parts = []
        for kind in KIND_NAMES:
            c, w = m["mean_delta_by_kind"].get(f"correct: {kind}"), m["mean_delta_by_kind"].get(f"wrong: {kind}")
            parts.append(f"{kind.split(' (')[0]} {_num(c)}|{_num(w)}")
        print(f"  {name:<18} " + ", ".join(parts))
    print()
    print("CEPO - RLSD (paired bootstrap over problems):")
    for name, m in payload["methods"].items():
        if not name.startswith("cepo"):
            continue
        parts = [f"{key} {_ci(m[key]['diff_vs_rlsd'], signed=True)}" for key in
                 ("auroc_abs_log_w_correct", "auroc_abs_log_w_wrong", "first_error_top1")
                 if key in m and "diff_vs_rlsd" in m[key]]
        print(f"  {name:<18} " + ", ".join(parts))


def _display_path(path: Path) -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _ci(value: dict[str, float] | None, signed: bool = False) -> str:
    if not value:
        return "n/a"
    fmt = "+.3f" if signed else ".3f"
    return f"{value['value']:{fmt}} [{value['ci_low']:{fmt}},{value['ci_high']:{fmt}}]" if signed else \
        f"{value['value']:{fmt}}±{(value['ci_high'] - value['ci_low']) / 2:.3f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 problems, 200 bootstrap replicates")
    parser.add_argument("--problems", type=int, default=256)
    parser.add_argument("--group", type=int, default=8, help="rollouts per problem (G)")
    parser.add_argument("--boot", type=int, default=1000, help="bootstrap replicates (over problems)")
    parser.add_argument("--lam", type=float, default=0.5, help="lambda of Eq. 7 (the schedule's first step)")
    parser.add_argument("--eps-w", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-problems", type=int, default=500, help="held-out problems for the teacher check")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, help="generation batch (default 512; 64 with --model)")
    parser.add_argument("--micro-batch-size", type=int,
                        help="log-prob pass batch (default: what keeps its float32 logits under 2 GB)")
    parser.add_argument("--warm-start", choices=("correct", "slip"), default="correct",
                        help="correct: SFT on correct solutions (default); slip: the learning benchmark's warm start "
                             "(30%% of unhinted targets carry one slip, hinted ones never)")
    parser.add_argument("--model", help="your model (path or hub id) instead of the built-in warm start")
    parser.add_argument("--data", help="parquet of problems for --model")
    parser.add_argument("--problem-column", default="problem")
    parser.add_argument("--answer-column", default="answer")
    parser.add_argument("--instruction", default="", help="text appended to every problem of --data")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="where the warm start is cached")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--name", default=None, help="result file stem (default credit_precision[_quick|_user])")
    parser.add_argument("--no-bar", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.quick:
        args.problems, args.boot, args.check_problems = min(args.problems, 64), min(args.boot, 200), 200
    if args.name is None:
        args.name = "credit_precision" + ("_user" if args.model else "_slip" if args.warm_start == "slip" else "") \
            + ("_quick" if args.quick else "")
    payload = run(args)
    print_report(payload)
    path = write_json(f"{args.name}.json", payload, Path(args.out_dir))
    print(f"\nwrote {path}" + (f" and {payload['figure']}" if payload["figure"] else "")
          + f" in {payload['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
