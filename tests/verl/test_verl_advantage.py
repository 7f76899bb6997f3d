"""Estimators through verl's own compute_advantage on a real DataProto, then the trainer-side modulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tensordict import TensorDict
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
from verl.trainer.ppo.ray_trainer import compute_advantage

from cepo.algorithms import (
    group_advantages,
    plan_teacher_passes,
)
from cepo.config import CEPOConfig
from cepo.integrations.verl.credit import (
    DEMO_KEY,
    HAS_NEG_KEY,
    HAS_TEACHER_KEY,
    NEG_KEY,
    POS_KEY,
    apply_token_credit,
    ground_truths_of,
)
from cepo.integrations.verl.estimators import cepo_trainer_advantage
from cepo.rewards import extract_answer
from cepo.testing import reference

B, T = 8, 6
SCORES = [1.0, 0.1, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # group a mixed, group b all-correct


def _batch(seed: int = 0) -> DataProto:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T, dtype=torch.long)
    lengths = torch.tensor([6, 4, 5, 2, 6, 3, 1, 6])
    for i, n in enumerate(lengths):
        mask[i, n:] = 0
    scores = torch.tensor(SCORES)
    rewards = torch.zeros(B, T)
    rewards[torch.arange(B), lengths - 1] = scores
    td = TensorDict(
        {
            "token_level_rewards": rewards,
            "response_mask": mask,
            "old_log_probs": -torch.rand(B, T, generator=g) * mask,
            POS_KEY: -torch.rand(B, T, generator=g) * mask,
            NEG_KEY: -torch.rand(B, T, generator=g) * mask,
        },
        batch_size=[B],
    )
    uid = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    has_neg = np.array([True] * 4 + [False] * 4)
    return DataProto(batch=td, non_tensor_batch={"uid": uid, HAS_NEG_KEY: has_neg})


@pytest.fixture(autouse=True)
def _inside_cepo_trainer():
    """These tests call verl's compute_advantage as CEPOTrainerSync._compute_advantage does (inside its context)."""
    with cepo_trainer_advantage():
        yield


def _algo(norm: bool = True) -> AlgoConfig:
    return AlgoConfig(adv_estimator="cepo", norm_adv_by_std_in_grpo=norm)


def test_estimators_registered():
    assert ADV_ESTIMATOR_REGISTRY["cepo"] is ADV_ESTIMATOR_REGISTRY["rlsd"]


@pytest.mark.parametrize("method", ["cepo", "rlsd"])
@pytest.mark.parametrize("norm", [True, False])
def test_estimator_equals_verl_grpo(method, norm):
    ours = compute_advantage(_batch(), adv_estimator=method, num_repeat=4, norm_adv_by_std_in_grpo=norm,
                             config=_algo(norm))
    grpo = compute_advantage(_batch(), adv_estimator="grpo", num_repeat=4, norm_adv_by_std_in_grpo=norm,
                             config=_algo(norm))
    torch.testing.assert_close(ours.batch["advantages"], grpo.batch["advantages"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.batch["returns"], ours.batch["advantages"])
    assert ours.batch["advantages"][:4].abs().sum() > 0


@pytest.mark.parametrize("method", ["cepo", "rlsd"])
def test_token_credit_after_compute_advantage(method):
    cfg = CEPOConfig(method=method)
    data = compute_advantage(_batch(), adv_estimator=method, num_repeat=4, config=_algo())
    before = data.batch["advantages"].clone()
    metrics = apply_token_credit(data, cfg, step=0, teacher_seconds=1.5)
    after = data.batch["advantages"]
    mask = data.batch["response_mask"].bool()
    # the float64 loop of Eq. 1 then Eqs. 4 / 5 + 7 (lam0 = 0.5 at step 0, eps_w = 0.5), from the rewards up
    seq = reference.grpo_advantages(SCORES, data.non_tensor_batch["uid"])
    expected = reference.modulated_advantages(
        seq, mask, 0.5, 0.5, data.batch["old_log_probs"], data.batch[POS_KEY],
        data.batch[NEG_KEY] if method == "cepo" else None,
        data.non_tensor_batch[HAS_NEG_KEY] if method == "cepo" else None)
    torch.testing.assert_close(after, expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(data.batch["returns"], after)
    assert not torch.equal(after, before)
    # Theorem 1 (i): sign(A_t) = sign(A) on every response token
    assert torch.equal(torch.sign(after)[mask], torch.sign(before)[mask])
    assert (after[~mask] == 0).all()
    assert metrics["cepo/lambda"] == 0.5 and metrics["cepo/teacher_time_s"] == 1.5
    for key in ("delta_pos_frac_adv_pos", "delta_neg_frac_adv_neg", "clip_rate", "adv_abs_mean_before",
                "adv_abs_mean_after"):
        assert f"cepo/{key}" in metrics


def test_cepo_g_minus_empty_rows_fall_back_to_rlsd():
    data = compute_advantage(_batch(), adv_estimator="cepo", num_repeat=4, config=_algo())
    rlsd = compute_advantage(_batch(), adv_estimator="rlsd", num_repeat=4, config=_algo())
    # make the group without a negative have a non-zero advantage: graded rewards in group b
    for d in (data, rlsd):
        d.batch["advantages"][4:] = torch.tensor([1.0, -1.0, 0.5, -0.5]).unsqueeze(-1) * d.batch["response_mask"][4:]
    apply_token_credit(data, CEPOConfig(method="cepo"), step=3)
    apply_token_credit(rlsd, CEPOConfig(method="rlsd"), step=3)
    torch.testing.assert_close(data.batch["advantages"][4:], rlsd.batch["advantages"][4:])
    assert not torch.allclose(data.batch["advantages"][:4], rlsd.batch["advantages"][:4])


def test_lambda_zero_and_grpo_leave_advantages():
    data = compute_advantage(_batch(), adv_estimator="cepo", num_repeat=4, config=_algo())
    before = data.batch["advantages"].clone()
    metrics = apply_token_credit(data, CEPOConfig(method="cepo"), step=25)
    assert metrics == {"cepo/lambda": 0.0} and torch.equal(data.batch["advantages"], before)
    metrics = apply_token_credit(data, CEPOConfig(method="grpo"), step=0)
    assert torch.equal(data.batch["advantages"], before)


def test_missing_teacher_field_is_named():
    data = compute_advantage(_batch(), adv_estimator="rlsd", num_repeat=4, config=_algo())
    data.batch.pop(POS_KEY)
    with pytest.raises(KeyError, match=POS_KEY):
        apply_token_credit(data, CEPOConfig(method="rlsd"), step=0)


def test_hints_from_decoded_responses():
    """The verl trainer's r- comes from the decoded responses through cepo.algorithms' plan (never "None")."""
    responses = [r"so \boxed{12}", r"\boxed{7}", "no box at all", r"\boxed{9}",  # group a
                 r"\boxed{3}", r"\boxed{3}"]  # group b: all correct
    scores = [1.0, 0.1, 0.0, 0.1, 1.0, 1.0]
    uids = ["a", "a", "a", "a", "b", "b"]
    answers = [extract_answer(r) for r in responses]
    adv = group_advantages(torch.tensor(scores), uids)
    plan = plan_teacher_passes("cepo", 0.5, range(6), adv, scores, uids, ["12"] * 4 + ["3"] * 2, answers, responses)
    # the unboxed rollout has the lowest reward but no answer: skipped, never "None"; ties -> first row
    assert plan.jobs == [(k, i, h) for i in range(4) for k, h in (("pos", "12"), ("neg", "7"))]
    assert plan.has_negative == [True] * 4 + [False] * 2
    own = plan_teacher_passes("cepo", 0.5, range(6), adv, scores, uids, ["12"] * 4 + ["3"] * 2, answers, responses,
                              negative_reference="own_answer")
    assert [h for k, _, h in own.jobs if k == "neg"] == ["7", "7", "7", "9"]


def test_ground_truth_missing_names_row():
    assert ground_truths_of([{"ground_truth": "3"}]) == ["3"]
    with pytest.raises(ValueError, match="row 1"):
        ground_truths_of([{"ground_truth": "3"}, {"ground_truth": ""}])


@pytest.mark.parametrize("method", ["opsd", "sdpo"])
def test_self_distillation_through_verl(method):
    """OPSD / SDPO on verl: verl's estimator gives Eq. 1, the trainer then writes the sampled-token distillation
    advantages sg(log P_T - log P_S) on the rows whose teacher was scored."""
    data = compute_advantage(_batch(), adv_estimator=method, num_repeat=4, config=_algo())
    key = POS_KEY if method == "opsd" else DEMO_KEY
    data.batch[DEMO_KEY] = data.batch[POS_KEY].flip(0)
    data.non_tensor_batch[HAS_TEACHER_KEY] = np.array([True, False] * 4)
    metrics = apply_token_credit(data, CEPOConfig(method=method), step=30)  # no lambda: distils at every step
    mask = data.batch["response_mask"].bool()
    teacher = torch.tensor([True, False] * 4).unsqueeze(-1) & mask
    expected = torch.where(teacher, data.batch[key] - data.batch["old_log_probs"], torch.zeros(B, T))
    torch.testing.assert_close(data.batch["advantages"], expected)
    assert metrics["cepo/has_teacher_frac"] == 0.5


def test_conspo_through_verl():
    """ConSPO on verl: its sequence advantage from the rewards, groups and old log-probs, spread over each
    response for verl's token-mean loss."""
    data = compute_advantage(_batch(), adv_estimator="conspo", num_repeat=4, config=_algo())
    data.batch["rm_scores"] = data.batch["token_level_rewards"].clone()
    apply_token_credit(data, CEPOConfig(method="conspo"), step=0, progress=0.5)
    mask = data.batch["response_mask"]
    # float64 reference: -dL/ds of Eq. 13 by autograd of the loss written out, with the paper's tau = 10 and, at
    # progress 0.5 past the warm-up ratio 0.3, the full margin M = 0.01; spread as A_i N / |o_i|
    scores = reference.mean_logprob_scores(data.batch["old_log_probs"], mask)
    seq = reference.conspo_sequence_advantages(scores, SCORES, data.non_tensor_batch["uid"], tau=10.0, margin=0.01)
    expected = reference.conspo_token_advantages(seq, mask)
    torch.testing.assert_close(data.batch["advantages"], expected.float(), rtol=1e-5, atol=1e-7)
    assert data.batch["advantages"][:4].abs().sum() > 0 and (data.batch["advantages"][4:] == 0).all()  # b: no negative
