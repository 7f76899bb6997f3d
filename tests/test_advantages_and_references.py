"""Eq. 1 against verl's own GRPO estimator; r- selection; lambda schedules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

from cepo.algorithms import (
    LambdaSchedule,
    constant_lambda,
    group_advantages,
    linear_lambda,
    negative_hints,
    select_negative_reference,
)


@st.composite
def scored_groups(draw: st.DrawFn) -> tuple[torch.Tensor, list]:
    n_groups = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(1, 8), min_size=n_groups, max_size=n_groups))
    use_str = draw(st.booleans())
    ids = [f"uid-{g}" if use_str else g for g, size in enumerate(sizes) for _ in range(size)]
    ids = draw(st.permutations(ids))
    values = draw(
        st.lists(
            st.sampled_from([0.0, 0.1, 1.0]) | st.floats(-3, 3, allow_nan=False),
            min_size=len(ids),
            max_size=len(ids),
        )
    )
    return torch.tensor(values, dtype=torch.float32), list(ids)


@settings(max_examples=150, deadline=None)
@given(groups=scored_groups(), norm_by_std=st.booleans(), resp_len=st.integers(1, 5))
def test_group_advantages_equal_verl(groups: tuple[torch.Tensor, list], norm_by_std: bool, resp_len: int) -> None:
    """Eq. 1 is numerically identical to verl's compute_grpo_outcome_advantage."""
    scores, ids = groups
    token_rewards = torch.zeros(len(ids), resp_len)
    token_rewards[:, -1] = scores
    mask = torch.ones(len(ids), resp_len)
    verl_adv, _ = compute_grpo_outcome_advantage(
        token_rewards, mask, np.array(ids, dtype=object), norm_adv_by_std_in_grpo=norm_by_std
    )
    ours = group_advantages(scores, ids, norm_by_std=norm_by_std)
    assert torch.equal(ours, verl_adv[:, 0])


def test_group_advantages_known_values() -> None:
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0]), ["a", "a", "a", "a", "b"])
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()
    torch.testing.assert_close(adv[:4], (torch.tensor([1.0, 0.0, 0.0, 1.0]) - 0.5) / (std + 1e-6))
    assert adv[4].item() == pytest.approx(5.0 / (1 + 1e-6))  # singleton group: mean 0, std 1 (verl's rule)
    assert torch.all(group_advantages(torch.ones(4), [0, 0, 0, 0]) == 0)  # all correct -> no signal
    assert torch.equal(group_advantages([1.0, 0.0, 0.0, 1.0], "aaaa"), adv[:4])  # plain sequences work too


@pytest.mark.parametrize(
    ("scores", "ids", "message"),
    [
        (torch.tensor([]), [], "empty"),
        (torch.tensor([1.0, float("nan")]), [0, 0], "NaN"),
        (torch.tensor([1.0, 0.0]), [0], "group_ids has 1"),
        (torch.ones(2, 2), [0, 0], "1-D"),
    ],
)
def test_group_advantages_bad_input(scores: torch.Tensor, ids: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        group_advantages(scores, ids)


@settings(max_examples=200, deadline=None)
@given(groups=scored_groups(), threshold=st.sampled_from([0.5, 0.0, 1.0]))
def test_select_negative_reference_is_lowest_rejected_of_group(
    groups: tuple[torch.Tensor, list], threshold: float
) -> None:
    scores, ids = groups
    chosen = select_negative_reference(scores, ids, threshold=threshold)
    for row, pick in enumerate(chosen):
        group = [j for j, g in enumerate(ids) if g == ids[row]]
        rejected = [j for j in group if scores[j] < threshold]
        if not rejected:
            assert pick is None
            continue
        assert pick in rejected
        lowest = min(scores[j].item() for j in rejected)
        assert scores[pick].item() == lowest
        assert pick == min(j for j in rejected if scores[j].item() == lowest)  # ties: first row


def test_negative_hints_skip_rollouts_without_answer() -> None:
    # group a: lowest rejected (0.0) has no boxed answer -> next-lowest with an answer (0.1)
    # group b: all correct -> G- empty; group c: only rejected one has no answer -> G- empty
    answers = ["3", None, "7", "5", "5", None, "2"]
    scores = [1.0, 0.0, 0.1, 1.0, 1.0, 0.0, 1.0]
    ids = ["a", "a", "a", "b", "b", "c", "c"]
    hints, has_neg = negative_hints(answers, scores, ids)
    assert hints == ["7", "7", "7", None, None, None, None]
    assert has_neg == [True, True, True, False, False, False, False]
    hints, has_neg = negative_hints(answers, scores, ids, require_answer=False)
    assert hints[:3] == ["", "", ""] and hints[5] == "" and "None" not in hints


def test_linear_lambda_matches_paper_schedule() -> None:
    values = [linear_lambda(s, 0.5, 25) for s in range(30)]
    assert values[0] == 0.5
    assert values[24] == pytest.approx(0.02)
    assert all(v == 0.0 for v in values[25:])
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert linear_lambda(3, 0.5, 0) == 0.0
    assert constant_lambda(100, 0.3) == 0.3
    assert LambdaSchedule("linear", 0.5, 25)(1) == pytest.approx(0.48)
    assert LambdaSchedule("constant", 0.2, 25)(40) == 0.2


@pytest.mark.parametrize(
    "kwargs", [{"kind": "cosine"}, {"lam0": 1.5}, {"warmup_steps": -1}], ids=["kind", "lam0", "warmup"]
)
def test_lambda_schedule_rejects_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs)).replace("kind", "schedule")):
        LambdaSchedule(**kwargs)


@settings(max_examples=150, deadline=None)
@given(
    n_groups=st.integers(1, 4),
    group_size=st.integers(2, 8),
    seed=st.integers(0, 2**31 - 1),
    nan_frac=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    norm_by_std=st.booleans(),
)
def test_unscorable_rows_match_trl_nan_aware_statistics(
    n_groups: int, group_size: int, seed: int, nan_frac: float, norm_by_std: bool
) -> None:
    """Rows whose every reward function returned None (NaN) are left out of the group statistics and get
    advantage 0, exactly as TRL's GRPOTrainer does with its own ``nanstd`` (recomputed here with TRL's
    function and TRL's formula, at our eps)."""
    from trl.trainer.utils import nanstd

    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (n_groups * group_size,), generator=gen).double() / 2
    scores[torch.rand(scores.shape, generator=gen) < nan_frac] = float("nan")
    ids = [i // group_size for i in range(scores.numel())]
    ours = group_advantages(scores, ids, norm_by_std=norm_by_std, skip_nan=True)

    grouped = scores.view(n_groups, group_size)
    mean = torch.nanmean(grouped, dim=1, keepdim=True)
    std = nanstd(grouped, dim=1, keepdim=True)
    # TRL's scale_rewards="none" has no contrast for a single scored row either: nanstd is NaN there
    nan_where_no_std = torch.where(torch.isnan(std), torch.full_like(std, float("nan")), torch.zeros_like(std))
    trl = (grouped - mean) / (std + 1e-6) if norm_by_std else grouped - mean + nan_where_no_std
    expected = torch.nan_to_num(trl, nan=0.0).flatten()
    # TRL's nanstd computes its Bessel factor count / (count - 1) in float32: agreement to ~1e-8, not 1e-15
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)
    assert torch.all(ours[torch.isnan(scores)] == 0)


def test_unscorable_rows_are_never_the_negative_reference() -> None:
    nan = float("nan")
    assert select_negative_reference([nan, 0.1, 1.0, nan], [0, 0, 0, 0]) == [1, 1, 1, 1]
    assert select_negative_reference([nan, 1.0], [0, 0]) == [None, None]
    with pytest.raises(ValueError, match="NaN"):  # without skip_nan a NaN reward is still a reward-function bug
        group_advantages([1.0, nan], [0, 0])


@st.composite
def answered_groups(draw: st.DrawFn) -> tuple[list[str | None], list[float], list[int]]:
    n_groups = draw(st.integers(1, 4))
    size = draw(st.integers(1, 8))
    ids = [g for g in range(n_groups) for _ in range(size)]
    answers = draw(st.lists(st.sampled_from(["1", "2", "3", None, ""]), min_size=len(ids), max_size=len(ids)))
    scores = draw(st.lists(st.sampled_from([0.0, 0.1, 0.9, 1.0, float("nan")]), min_size=len(ids), max_size=len(ids)))
    return answers, scores, ids


@settings(max_examples=200, deadline=None)
@given(groups=answered_groups(), require_answer=st.booleans())
def test_negative_reference_strategies(groups: tuple[list, list, list], require_answer: bool) -> None:
    """own_answer: a rejected rollout with an answer contrasts with its own answer, every other rollout keeps the
    paper's r-; most_frequent: one r- per group, a commonest wrong answer; all three agree on which groups have
    an r- at all."""
    answers, scores, ids = groups
    paper, has_paper = negative_hints(answers, scores, ids, require_answer=require_answer)
    own, has_own = negative_hints(answers, scores, ids, require_answer=require_answer, reference="own_answer")
    common, has_common = negative_hints(answers, scores, ids, require_answer=require_answer, reference="most_frequent")
    rejected = [s == s and s < 0.5 and a is not None and a.strip() != "" for a, s in zip(answers, scores, strict=True)]
    for i in range(len(ids)):
        assert own[i] == (answers[i] if rejected[i] else paper[i])
        group = [j for j in range(len(ids)) if ids[j] == ids[i]]
        wrong = [answers[j] for j in group if rejected[j]]
        if wrong:
            assert common[i] in wrong and wrong.count(common[i]) == max(wrong.count(w) for w in wrong)
            assert all(common[j] == common[i] for j in group)
        else:
            assert common[i] == paper[i]
    assert has_paper == has_own == has_common


def test_negative_reference_example_and_bad_value() -> None:
    answers = ["3", None, "7", "5", "5", "7", "5", "9"]
    scores = [1.0, 0.0, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    ids = list("aaaaaaab")
    assert negative_hints(answers, scores, ids)[0] == ["7"] * 7 + ["9"]
    assert negative_hints(answers, scores, ids, reference="own_answer")[0] == ["7", "7", "7", "5", "5", "7", "5", "9"]
    assert negative_hints(answers, scores, ids, reference="most_frequent")[0] == ["5"] * 7 + ["9"]
    with pytest.raises(ValueError, match="negative reference must be one of"):
        negative_hints(answers, scores, ids, reference="random")
    from cepo.config import CEPOConfig

    with pytest.raises(ValueError, match=r"cepo\.negative_reference must be one of"):
        CEPOConfig(negative_reference="lowest")
