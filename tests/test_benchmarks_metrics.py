"""The metric code behind the benchmarks (``cepo.analysis`` and the labelling of ``benchmarks/credit_precision.py``):
AUROC against a direct pairwise count, the cluster-bootstrap bookkeeping, top-k with ties, the phase timer's
bookkeeping, and decisive-token labelling on hand-written solutions."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cepo.analysis.credit_quality import (
    auroc,
    bootstrap_auroc,
    bootstrap_counts,
    bootstrap_mean,
    char_to_token,
    first_divergence,
    percentile_ci,
    result_char_spans,
    token_char_spans,
    tokens_in_spans,
    topk_hit_probability,
)
from cepo.analysis.timing import PhaseTimer

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def pairwise_auroc(scores, labels, weights=None) -> float:
    """The definition: over all (positive, negative) pairs, 1 if the positive scores higher, 1/2 if equal."""
    weights = np.ones(len(scores)) if weights is None else weights
    wins = total = 0.0
    for i, j in itertools.product(range(len(scores)), repeat=2):
        if labels[i] and not labels[j]:
            pair = weights[i] * weights[j]
            total += pair
            wins += pair * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0.0)
    return wins / total


def test_auroc_hand_built_case_matches_pairwise_count() -> None:
    scores = [0.9, 0.4, 0.4, 0.1, 0.8, 0.4, 0.2, 0.7]
    labels = [True, True, False, False, False, True, False, True]
    # positives 0.9, 0.4, 0.4, 0.7 vs negatives 0.4, 0.1, 0.8, 0.2: 4 + (2.5 + 2.5) + 3 wins of 16 pairs
    assert auroc(scores, labels) == pytest.approx(12 / 16)
    assert auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels))


def test_auroc_random_cases_with_ties_and_weights() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 30))
        scores = rng.integers(0, 5, n).astype(float)  # many ties
        labels = rng.random(n) < 0.4
        labels[0], labels[1] = True, False
        weights = rng.integers(0, 4, n).astype(float)
        weights[0] = weights[1] = 1.0
        assert auroc(scores, labels) == pytest.approx(pairwise_auroc(scores, labels))
        assert auroc(scores, labels, weights) == pytest.approx(pairwise_auroc(scores, labels, weights))


def test_auroc_edge_cases() -> None:
    assert auroc([1.0, 1.0, 1.0], [True, False, False]) == 0.5  # constant scores: GRPO
    assert auroc([2.0, 1.0], [True, False]) == 1.0
    assert np.isnan(auroc([1.0, 2.0], [True, True]))  # no negatives
    with pytest.raises(ValueError):
        auroc([1.0], [True, False])


def test_bootstrap_bookkeeping() -> None:
    counts = bootstrap_counts(5, 200, seed=1)
    assert counts.shape == (200, 5) and np.all(counts.sum(axis=1) == 5)
    assert np.array_equal(counts, bootstrap_counts(5, 200, seed=1))  # reproducible

    # a replicate weights every token by its cluster's multiplicity = duplicating the clusters' tokens
    scores = np.array([0.3, 0.9, 0.2, 0.5, 0.7, 0.1])
    labels = np.array([True, True, False, False, True, False])
    clusters = np.array([0, 0, 1, 1, 2, 2])
    replicate = np.array([[2.0, 0.0, 1.0]])
    keep = np.concatenate([np.repeat(np.where(clusters == c)[0][None], int(k), axis=0).ravel()
                           for c, k in enumerate(replicate[0])])
    assert bootstrap_auroc(scores, labels, clusters, replicate)[0] == pytest.approx(auroc(scores[keep], labels[keep]))
    assert bootstrap_auroc(scores, labels, clusters, np.ones((1, 3)))[0] == pytest.approx(auroc(scores, labels))
    values = np.array([1.0, 3.0, 5.0, 7.0, 9.0, 11.0])
    assert bootstrap_mean(values, clusters, replicate)[0] == pytest.approx(values[keep].mean())

    low, high = percentile_ci(np.arange(101.0), alpha=0.1)
    assert (low, high) == pytest.approx((5.0, 95.0))
    assert percentile_ci([np.nan, 1.0, np.nan]) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_mean(values, np.array([0, 0, 1, 1, 2, 3]), np.ones((1, 3)))  # cluster id out of range


def test_topk_hit_probability_breaks_ties_at_random() -> None:
    assert topk_hit_probability([0.1, 5.0, 0.3], 1, 1) == 1.0
    assert topk_hit_probability([0.1, 5.0, 0.3], 2, 1) == 0.0
    assert topk_hit_probability([0.1, 5.0, 0.3], 2, 3) == 1.0
    assert topk_hit_probability([1.0] * 10, 4, 3) == pytest.approx(0.3)  # GRPO's equal weights: chance k / n
    assert topk_hit_probability([2.0, 1.0, 1.0, 1.0], 1, 2) == pytest.approx(1 / 3)  # one slot for three tied


def test_phase_timer_phases_sum_to_the_step() -> None:
    now = [0.0]
    timer = PhaseTimer(clock=lambda: now[0])
    with timer.step(rest="update"):
        now[0] += 1.0  # unclaimed: update
        with timer.phase("generation"):
            now[0] += 2.0
        with timer.phase("teacher"):
            now[0] += 0.5
            with timer.phase("teacher_forward"):  # nested: charged here, not to teacher
                now[0] += 3.0
            now[0] += 0.25
        now[0] += 4.0
    record = timer.steps[-1]
    assert record == {"update": 5.0, "generation": 2.0, "teacher": 0.75, "teacher_forward": 3.0, "total": 10.75}
    assert sum(v for k, v in record.items() if k != "total") == pytest.approx(record["total"])

    timer.begin_step(rest="update")  # the callback form
    now[0] += 1.0
    with timer.phase("generation"):
        now[0] += 1.0
    timer.end_step()
    assert timer.steps[-1] == {"update": 1.0, "generation": 1.0, "total": 2.0}
    assert timer.summary() == {"generation": 1.5, "teacher": 0.375, "teacher_forward": 1.5, "total": 6.375,
                               "update": 3.0}
    with timer.phase("outside"):  # outside a step: ignored, no error
        now[0] += 1.0
    with pytest.raises(RuntimeError):
        timer.end_step()


def test_phase_timer_real_clock() -> None:
    timer = PhaseTimer()
    with timer.step():
        with timer.phase("a"):
            sum(range(10_000))
        sum(range(10_000))
    record = timer.steps[0]
    assert sum(v for k, v in record.items() if k != "total") == pytest.approx(record["total"], rel=1e-6, abs=1e-6)


def test_labelling_helpers_on_a_hand_written_solution() -> None:
    text = "7+15=22. 22*3=66. 66-4=62. \\boxed{62}"
    spans = result_char_spans(text)
    assert [text[a:b] for a, b in spans] == ["22", "66", "62"]
    tokens = ["7", "+", "1", "5", "=", "2", "2", ".", " ", "2", "2", "*", "3", "=", "6", "6", ".", " ", "6", "6", "-",
              "4", "=", "6", "2", ".", " ", "\\", "boxed", "{", "6", "2", "}"]
    token_spans = list(itertools.accumulate([(0, 0), *[(0, len(t)) for t in tokens]],
                                            lambda prev, t: (prev[1], prev[1] + t[1])))[1:]
    assert "".join(tokens) == text and token_spans[-1] == (len(text) - 1, len(text))
    inside = tokens_in_spans(token_spans, spans)
    assert [tokens[i] for i in np.where(inside >= 0)[0]] == ["2", "2", "6", "6", "6", "2"]
    assert inside.tolist().count(0) == 2 and inside[-3] == -1  # the boxed copy is filler

    wrong = "7+15=22. 22*3=68. 68-4=64. \\boxed{64}"
    where = first_divergence(wrong, text)
    assert wrong[where] == "8" and char_to_token(token_spans, where) == 15  # the second digit of the 2nd result
    assert first_divergence(text, text) is None
    assert first_divergence("7+15=22.", text) == len("7+15=22.")  # stopped early
    assert first_divergence(text + " more", text) == len(text)


def test_decisive_labels_and_first_error_with_the_benchmark_tokenizer() -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from _arith import ArithProblem, Rollouts, build_arith_tokenizer
    from credit_precision import KIND_NAMES, Problem, label_rows

    tokenizer = build_arith_tokenizer()
    problem = ArithProblem(7, 15, 3, 4)
    assert problem.solution == "7+15=22. 22*3=66. 66-4=62. \\boxed{62}"
    responses = [problem.solution, "7+15=22. 22*3=68. 68-4=64. \\boxed{64}", "7+15=22. 22*3=66."]
    ids = [tokenizer(r + tokenizer.eos_token, add_special_tokens=False)["input_ids"] for r in responses]
    width = max(map(len, ids))
    tensor = torch.full((3, width), tokenizer.pad_token_id)
    mask = torch.zeros_like(tensor)
    for i, row in enumerate(ids):
        tensor[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    assert token_char_spans(tokenizer, ids[0][:-1])[:3] == [(0, 1), (1, 2), (2, 3)]
    rollouts = Rollouts(tensor, mask, responses)
    problems = [Problem(problem.messages(), problem.answer, problem.solution)]
    kinds, first_error, error_is_result = label_rows(tokenizer, rollouts, problems, [0, 0, 0], [0, 1, 2])

    pieces = [tokenizer.decode([t]) for t in ids[0]]
    names = [KIND_NAMES[k] for k in kinds[0]]
    assert [p for p, n in zip(pieces, names, strict=True) if n == "result 1 (s)"] == ["2", "2"]
    assert [p for p, n in zip(pieces, names, strict=True) if n == "result 2 (p)"] == ["6", "6"]
    assert [p for p, n in zip(pieces, names, strict=True) if n == "result 3+ (r)"] == ["6", "2"]
    assert [p for p, n in zip(pieces, names, strict=True) if n == "boxed answer"] == ["6", "2"]
    assert pieces[-1] == "<|im_end|>" and names[-1] == "other filler"
    assert first_error[0] is None and not error_is_result[0]
    wrong_pieces = [tokenizer.decode([t]) for t in ids[1]]
    assert first_error[1] == 15 and wrong_pieces[15] == "8" and error_is_result[1]
    assert first_error[2] == len(ids[2]) - 1 and not error_is_result[2]  # stopped early: the EOS is the error


def test_overhead_counts_the_rendered_teacher_prompt_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    # transformers 5 returns a dict from apply_chat_template(tokenize=True): its len() is 2 keys, not the token count.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # importing overhead.py must not re-exec pytest
    sys.path.insert(0, str(BENCHMARKS))
    from overhead import make_prompts, rendered_prompt_tokens

    from cepo.testing import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    content = make_prompts(tokenizer, 1, 96, seed=0)[0]["prompt"][0]["content"]
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
    expected = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert 80 <= expected <= 96
    assert rendered_prompt_tokens(tokenizer, content) == expected
