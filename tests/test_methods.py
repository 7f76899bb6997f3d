"""The method registry: declarations, the teacher-row plan both engines follow, and the credit of the loss-level
methods in policy-gradient form (OPSD / SDPO sampled-token, ConSPO)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cepo.algorithms import (
    METHODS,
    CreditInputs,
    compute_token_advantages,
    conspo_loss,
    conspo_scores,
    demonstration_rows,
    get_method,
    negative_hints,
    plan_teacher_passes,
    sequence_advantages,
)
from cepo.config import CEPOConfig


def test_every_method_is_declared() -> None:
    assert sorted(METHODS) == ["cepo", "conspo", "grpo", "opsd", "rlsd", "sdpo"]
    assert get_method("cepo").hints == ("pos", "neg") and get_method("cepo").lambda_gated
    assert get_method("opsd").hints == ("pos",) and get_method("opsd").teacher_rows == "all"
    assert get_method("sdpo").hints == ("demo",)
    assert get_method("conspo").hints == () and get_method("conspo").one_update_per_rollout
    with pytest.raises(ValueError, match="unknown method 'ppo'; known methods"):
        get_method("ppo")


@st.composite
def batches(draw: st.DrawFn) -> dict:
    n_groups, size = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    n = n_groups * size
    ids = [g for g in range(n_groups) for _ in range(size)]
    scores = draw(st.lists(st.sampled_from([0.0, 0.1, 1.0]), min_size=n, max_size=n))
    answers = draw(st.lists(st.sampled_from(["1", "2", None]), min_size=n, max_size=n))
    adv = sequence_advantages("grpo", torch.tensor(scores), ids)
    return {"ids": ids, "scores": scores, "answers": answers, "adv": adv, "texts": [f"text {i}" for i in range(n)]}


@settings(max_examples=100, deadline=None)
@given(batch=batches(), method=st.sampled_from(["grpo", "rlsd", "cepo", "opsd", "sdpo", "conspo"]),
       lam=st.sampled_from([0.0, 0.3]))
def test_plan_follows_the_declaration(batch: dict, method: str, lam: float) -> None:
    """Teacher rows: the declared contexts, on the declared rows, with the paper's hints; P_S where it is read."""
    n = len(batch["ids"])
    gts = [f"gt{i}" for i in range(n)]
    plan = plan_teacher_passes(method, lam, range(n), batch["adv"], batch["scores"], batch["ids"], gts,
                               batch["answers"], batch["texts"])
    spec = get_method(method)
    active = [i for i in range(n) if spec.teacher_rows == "all" or float(batch["adv"][i]) != 0.0]
    kinds = () if spec.lambda_gated and lam == 0 else spec.hints
    neg, has_neg = negative_hints(batch["answers"], batch["scores"], batch["ids"])
    demos = demonstration_rows(batch["scores"], batch["ids"])
    expected = []
    for i in active:
        if "pos" in kinds:
            expected.append(("pos", i, gts[i]))
        if "neg" in kinds and has_neg[i]:
            expected.append(("neg", i, neg[i]))
        if "demo" in kinds and demos[i] is not None:
            expected.append(("demo", i, batch["texts"][demos[i]]))
    assert plan.jobs == expected
    assert all(j != i for kind, i, text in plan.jobs if kind == "demo" for j in [int(text.split()[1])])  # not self
    teacher = {i for _, i, _ in plan.jobs if _ != "neg"}
    want_student = {"none": set(), "teacher": teacher, "no_negative": {i for i in teacher if not has_neg[i]},
                    "all": set(range(n))}[spec.student_rows]
    assert set(plan.student_rows) == (want_student if kinds or spec.student_rows == "all" else set())


def test_plan_for_one_process_share() -> None:
    """A process plans its own rows of a gathered batch: hints come from the whole group, rows are local."""
    scores, ids = [1.0, 0.1, 1.0, 0.0], [0, 0, 0, 0]
    adv = sequence_advantages("grpo", torch.tensor(scores), ids)
    plan = plan_teacher_passes("cepo", 0.5, [0, 1], adv, scores, ids, ["7", "7"], ["7", "3", "7", "5"],
                               ["a", "b", "c", "d"], negative_reference="paper")
    assert plan.jobs == [("pos", 0, "7"), ("neg", 0, "5"), ("pos", 1, "7"), ("neg", 1, "5")]  # r- lives on row 3
    sdpo = plan_teacher_passes("sdpo", 0.5, [2, 3], adv, scores, ids, ["7", "7"], [None] * 4, ["a", "b", "c", "d"])
    assert sdpo.jobs == [("demo", 0, "a"), ("demo", 1, "a")] and sdpo.has_teacher == [True, True]
    assert demonstration_rows([1.0, 0.1, 0.0], [0, 0, 0]) == [None, 0, 0]  # the only success sees no demo


def _distill_inputs(weight: float) -> CreditInputs:
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    return CreditInputs(
        advantages=torch.tensor([0.7, -0.7, 0.0]), response_mask=mask, lam=0.0, eps_w=0.5,
        logp_student=-torch.rand(3, 4), logp_pos=-torch.rand(3, 4), logp_demo=-torch.rand(3, 4),
        has_teacher=torch.tensor([True, False, True]), options={"distill_weight": weight},
    )


@pytest.mark.parametrize("method", ["opsd", "sdpo"])
@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_distillation_credit(method: str, weight: float) -> None:
    """A_t = (1 - w) A + w sg(log P_T - log P_S) on rows with a teacher pass, (1 - w) A elsewhere (no lambda: the
    distillation runs at every step, on rows with A = 0 too)."""
    x = _distill_inputs(weight)
    teacher = x.logp_pos if method == "opsd" else x.logp_demo
    got, metrics = compute_token_advantages(method, x)
    mask = x.response_mask.bool()
    grpo = x.advantages.unsqueeze(-1).expand(3, 4)
    distill = torch.where(x.has_teacher.unsqueeze(-1), teacher - x.logp_student, torch.zeros(3, 4))
    torch.testing.assert_close(got, torch.where(mask, (1 - weight) * grpo + weight * distill, torch.zeros(3, 4)))
    assert bool((got[2][mask[2]] != 0).all())  # A = 0 but distilled
    assert metrics["has_teacher_frac"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="needs logp_student"):
        compute_token_advantages(method, CreditInputs(x.advantages, x.response_mask, 0.0, 0.5,
                                                      has_teacher=x.has_teacher, options={"distill_weight": weight}))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), tau=st.sampled_from([0.5, 10.0]), margin=st.sampled_from([0.0, 0.01, 0.3]))
def test_conspo_token_advantages_give_conspo_gradient(seed: int, tau: float, margin: float) -> None:
    """ConSPO's advantages through an engine's token-mean policy-gradient loss (ratio 1, on-policy) have exactly the
    gradient of the ConSPO loss (an independent autograd computation of its objective)."""
    gen = torch.Generator().manual_seed(seed)
    b, t, v = 8, 5, 7
    logits = torch.randn(b, t, v, generator=gen, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, v, (b, t), generator=gen)
    mask = (torch.rand(b, t, generator=gen) < 0.8).long()
    mask[:, 0] = 1
    rewards = torch.randint(0, 2, (b,), generator=gen).double()
    rewards[3] = float("nan")  # an unscorable rollout: no part in the objective
    groups = [i // 4 for i in range(b)]
    logp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    scored = [i for i in range(b) if not torch.isnan(rewards[i])]
    objective = conspo_loss(conspo_scores(logp, mask)[scored], rewards[scored], [groups[i] for i in scored], tau,
                            margin)
    (want,) = torch.autograd.grad(objective, logits, retain_graph=True)

    options = {"tau": tau, "margin": margin, "threshold": 0.5}
    adv = sequence_advantages("conspo", rewards, groups, scores=conspo_scores(logp.detach(), mask), options=options)
    n_tokens = int(mask.sum())
    token_adv, _ = compute_token_advantages("conspo", CreditInputs(adv, mask, 0.0, 0.5, num_tokens=n_tokens))
    ratio = torch.exp(logp - logp.detach())
    engine_loss = -(token_adv * ratio * mask).sum() / n_tokens  # TRL's dapo / verl's token-mean
    (got,) = torch.autograd.grad(engine_loss, logits)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_method_config_blocks() -> None:
    cfg = CEPOConfig.from_mapping({"method": "sdpo", "distill": {"weight": 0.5}, "conspo": {"tau": 5.0}})
    assert cfg.distill.weight == 0.5 and cfg.conspo.tau == 5.0
    assert cfg.template_for(("demo",)) == cfg.distill.demo_template != cfg.teacher_template
    assert cfg.template_for(("pos", "neg")) == cfg.teacher_template
    options = CEPOConfig(conspo={"margin": 0.02, "margin_warmup_ratio": 0.5}).credit_options(progress=0.25)
    assert options["margin"] == pytest.approx(0.01)  # half-way up the half-cosine ramp
    for bad, message in [({"distill": {"weight": 1.5}}, r"cepo\.distill\.weight must be in \[0, 1\]"),
                         ({"conspo": {"tau": 0}}, r"cepo\.conspo\.tau must be > 0"),
                         ({"conspo": {"taux": 1}}, r"unknown key\(s\) cepo\.conspo\.taux"),
                         ({"distill": {"demo_template": "{{ prompt }}"}}, r"cepo\.distill\.demo_template")]:
        with pytest.raises(ValueError, match=message):
            CEPOConfig.from_mapping(bad)
