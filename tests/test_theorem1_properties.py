"""Paper guarantees as property tests: Theorem 1 (i)-(iii), Proposition 1, filler neutrality."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cepo.algorithms import (
    contrastive_delta,
    evidence_weights,
    modulate_advantages,
    rlsd_delta,
)
from cepo.testing import reference

LAMBDAS = st.floats(min_value=0.0, max_value=1.0)
EPS_W = st.floats(min_value=1e-3, max_value=0.999)


@st.composite
def credit_batch(draw: st.DrawFn, dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """A random batch: shapes, masks, advantages (with exact zeros), three log-prob tensors."""
    b = draw(st.integers(1, 6))
    t = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    scale = draw(st.sampled_from([0.01, 1.0, 8.0, 40.0]))
    logps = [-(torch.rand(b, t, generator=gen, dtype=dtype) * scale) for _ in range(3)]
    adv = torch.randn(b, generator=gen, dtype=dtype) * draw(st.sampled_from([1e-3, 1.0, 30.0]))
    zero_rows = torch.rand(b, generator=gen) < 0.2
    adv = torch.where(zero_rows, torch.zeros_like(adv), adv)
    mask = (torch.rand(b, t, generator=gen) < 0.8).to(dtype)
    has_neg = torch.rand(b, generator=gen) < 0.6
    return {
        "logp_pos": logps[0],
        "logp_neg": logps[1],
        "logp_student": logps[2],
        "adv": adv,
        "mask": mask,
        "has_neg": has_neg,
    }


@settings(max_examples=200, deadline=None)
@given(batch=credit_batch(), lam=LAMBDAS, eps_w=EPS_W, token_level=st.booleans())
def test_direction_anchoring(batch: dict[str, torch.Tensor], lam: float, eps_w: float, token_level: bool) -> None:
    """Theorem 1 (i): sign(A_t) = sign(A) on every unmasked token, for sequence or token advantages."""
    delta = contrastive_delta(
        batch["logp_pos"], batch["logp_neg"], batch["logp_student"], batch["has_neg"], batch["mask"]
    )
    adv = batch["adv"]
    if token_level:
        adv = adv.unsqueeze(-1) * torch.rand_like(batch["mask"]).add(0.5)
    out = modulate_advantages(adv, delta, batch["mask"], lam, eps_w)
    full_adv = adv.unsqueeze(-1).expand_as(delta) if adv.dim() == 1 else adv
    on = batch["mask"].bool()
    assert torch.equal(torch.sign(out[on]), torch.sign(full_adv[on]))
    assert torch.all(out[~on] == 0)
    # the bracket of Eq. 7 lies in [1 - lam*eps_w, 1 + lam*eps_w]
    ratio = out[on & (full_adv != 0)] / full_adv[on & (full_adv != 0)]
    assert torch.all(ratio >= 1 - lam * eps_w - 1e-12)
    assert torch.all(ratio <= 1 + lam * eps_w + 1e-12)


class _TinyPolicy(torch.nn.Module):
    """A context-conditioned next-token model with its own float64 parameters."""

    def __init__(self, vocab: int, dim: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, dim, dtype=torch.float64)
        self.head = torch.nn.Linear(dim, vocab, dtype=torch.float64)

    def token_logps(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log p(tokens[b, t] | context[b, t]) for (B, T) integer tensors."""
        logits = self.head(torch.tanh(self.embed(context)))
        return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _verl_policy_loss(logp: torch.Tensor, token_adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """verl's registered ``vanilla`` policy loss, as its actor calls it for our runs (paper_base.yaml: clip 0.2 /
    0.28, token-mean), at the rollout policy (old log-probs = the current ones, detached)."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.workers.config import FSDPActorConfig

    config = FSDPActorConfig(strategy="fsdp", ppo_micro_batch_size_per_gpu=1, rollout_n=1, clip_ratio_low=0.2,
                             clip_ratio_high=0.28)
    loss, _ = get_policy_loss_fn("vanilla")(logp.detach(), logp, token_adv, mask, "token-mean", config)
    return loss


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 4),
    t=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    lam=LAMBDAS,
    eps_w=EPS_W,
)
def test_leakage_free_gradient(b: int, t: int, seed: int, lam: float, eps_w: float) -> None:
    """Theorem 1 (ii) through the loss verl's actor calls: teacher log-probs produced by a module with its own
    parameters, fed through Eqs. 5 and 7 and verl's PPO-clip policy loss, give that module no gradient, and the policy
    gradient equals the float64 gradient of -sum_t A_t log pi(y_t) / N, with A_t the float64 loop of Eq. 7 (a
    constant)."""
    vocab, dim = 11, 5
    gen = torch.Generator().manual_seed(seed)
    policy = _TinyPolicy(vocab, dim, seed)
    teacher = _TinyPolicy(vocab, dim, seed + 1)
    context = torch.randint(0, vocab, (b, t), generator=gen)
    tokens = torch.randint(0, vocab, (b, t), generator=gen)
    hint_pos = torch.randint(0, vocab, (b, t), generator=gen)
    hint_neg = torch.randint(0, vocab, (b, t), generator=gen)
    mask = (torch.rand(b, t, generator=gen) < 0.8).double()
    mask[:, 0] = 1.0
    adv = torch.randn(b, generator=gen, dtype=torch.float64)
    has_neg = torch.rand(b, generator=gen) < 0.5

    logp = policy.token_logps(context, tokens)
    # teacher passes WITH autograd enabled: the stop-gradient must come from the algorithm itself
    logp_pos = teacher.token_logps(hint_pos, tokens)
    logp_neg = teacher.token_logps(hint_neg, tokens)
    delta = contrastive_delta(logp_pos, logp_neg, logp, has_neg, mask)
    token_adv = modulate_advantages(adv, delta, mask, lam, eps_w)
    _verl_policy_loss(logp, token_adv, mask).backward()
    for param in teacher.parameters():
        assert param.grad is None or torch.count_nonzero(param.grad) == 0

    expected_adv = reference.modulated_advantages(adv, mask, lam, eps_w, logp.detach(), logp_pos.detach(),
                                                  logp_neg.detach(), has_neg)
    torch.testing.assert_close(token_adv, expected_adv, rtol=1e-12, atol=1e-15)
    expected_policy = _TinyPolicy(vocab, dim, seed)
    reference_loss = -(expected_adv * expected_policy.token_logps(context, tokens) * mask).sum() / mask.sum()
    reference_loss.backward()
    for got, want in zip(policy.parameters(), expected_policy.parameters(), strict=True):
        assert want.grad is not None
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-9, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(batch=credit_batch(), lam=LAMBDAS, eps_w=EPS_W)
def test_rlsd_containment(batch: dict[str, torch.Tensor], lam: float, eps_w: float) -> None:
    """Theorem 1 (iii): P_T- = P_S gives RLSD (Eq. 4) exactly, and so does a row with G- empty; every side is checked
    against the float64 loop of Eqs. 4, 5 and 7 (cepo.testing.reference), not against another cepo function."""
    pos, neg, student, mask = batch["logp_pos"], batch["logp_neg"], batch["logp_student"], batch["mask"]
    adv, has_neg = batch["adv"], batch["has_neg"]
    all_neg = torch.ones_like(has_neg)
    on = mask.bool()
    rlsd_expected = reference.modulated_advantages(adv, mask, lam, eps_w, student, pos)

    rlsd = rlsd_delta(pos, student, mask)
    assert torch.equal(rlsd[on], (pos - student)[on]) and torch.all(rlsd[~on] == 0)  # Eq. 4's delta
    torch.testing.assert_close(modulate_advantages(adv, rlsd, mask, lam, eps_w), rlsd_expected, rtol=1e-12, atol=0)
    # P_T- = P_S on every row: CEPO is RLSD
    same = contrastive_delta(pos, student.clone(), student, all_neg, mask)
    torch.testing.assert_close(modulate_advantages(adv, same, mask, lam, eps_w), rlsd_expected, rtol=1e-12, atol=0)
    # rows whose group has no r- fall back to RLSD; the others contrast with P_T-
    mixed = modulate_advantages(adv, contrastive_delta(pos, neg, student, has_neg, mask), mask, lam, eps_w)
    cepo_expected = reference.modulated_advantages(adv, mask, lam, eps_w, student, pos, neg, has_neg)
    torch.testing.assert_close(mixed, cepo_expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(mixed[~has_neg], rlsd_expected[~has_neg], rtol=1e-12, atol=0)


@settings(max_examples=300, deadline=None)
@given(
    logp_pos=st.floats(-15.0, 0.0),
    logp_neg=st.floats(-15.0, 0.0),
    logp_student=st.floats(-15.0, 0.0),
    adv=st.floats(0.01, 10.0),
    positive=st.booleans(),
)
def test_proposition1_sharpness(
    logp_pos: float, logp_neg: float, logp_student: float, adv: float, positive: bool
) -> None:
    """Proposition 1: for A > 0, w_CE > w_RLSD iff P_T- < P_S; for A < 0, iff P_T- > P_S."""
    signed_adv = torch.tensor([adv if positive else -adv], dtype=torch.float64)
    pos = torch.tensor([[logp_pos]], dtype=torch.float64)
    neg = torch.tensor([[logp_neg]], dtype=torch.float64)
    student = torch.tensor([[logp_student]], dtype=torch.float64)
    w_ce = evidence_weights(signed_adv, contrastive_delta(pos, neg, student, torch.tensor([True])))
    w_rlsd = evidence_weights(signed_adv, rlsd_delta(pos, student))
    sharper = bool(w_ce.item() > w_rlsd.item())
    if abs(logp_neg - logp_student) < 1e-6:  # equal up to float rounding of exp
        assert w_ce.item() == pytest.approx(w_rlsd.item(), rel=1e-5)
    elif positive:
        assert sharper == (logp_neg < logp_student)
    else:
        assert sharper == (logp_neg > logp_student)


@settings(max_examples=100, deadline=None)
@given(batch=credit_batch(), lam=LAMBDAS, eps_w=EPS_W, filler_seed=st.integers(0, 2**31 - 1))
def test_filler_tokens_get_unit_weight(batch: dict[str, torch.Tensor], lam: float, eps_w: float,
                                       filler_seed: int) -> None:
    """Proposition 1, case 3: on the tokens where P_T+ = P_T- (filler, delta = 0) the weight is 1 and A_t = A
    exactly, whatever P_S and lam; the other tokens of the same rows follow the float64 loop of Eq. 7."""
    pos, mask, adv, student = batch["logp_pos"], batch["mask"], batch["adv"], batch["logp_student"]
    filler = torch.rand(mask.shape, generator=torch.Generator().manual_seed(filler_seed)) < 0.5
    neg = torch.where(filler, pos, batch["logp_neg"])  # the r- context agrees with r+ on the filler tokens only
    all_neg = torch.ones_like(batch["has_neg"])
    delta = contrastive_delta(pos, neg, student, all_neg, mask)
    out = modulate_advantages(adv, delta, mask, lam, eps_w)
    on = mask.bool()
    full_adv = adv.unsqueeze(-1).expand_as(out)
    assert torch.all(evidence_weights(adv, delta)[on & filler] == 1)
    assert torch.equal(out[on & filler], full_adv[on & filler])
    expected = reference.modulated_advantages(adv, mask, lam, eps_w, student, pos, neg, all_neg)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=0)


@settings(max_examples=100, deadline=None)
@given(batch=credit_batch(), eps_w=EPS_W)
def test_lambda_zero_is_grpo(batch: dict[str, torch.Tensor], eps_w: float) -> None:
    """lam = 0 leaves the GRPO advantage untouched on every token."""
    delta = rlsd_delta(batch["logp_pos"], batch["logp_student"], batch["mask"])
    out = modulate_advantages(batch["adv"], delta, batch["mask"], 0.0, eps_w)
    assert torch.equal(out, batch["adv"].unsqueeze(-1) * batch["mask"])


def _completion_logps(model: torch.nn.Module, context: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    """log p(completion[b, t] | context[b], completion[b, :t]) of a causal LM, (B, T); no padding."""
    logits = model(input_ids=torch.cat([context, completion], dim=1)).logits[:, context.shape[1] - 1 : -1]
    return torch.log_softmax(logits, dim=-1).gather(-1, completion.unsqueeze(-1)).squeeze(-1)


def test_leakage_free_gradient_through_trl_loss(tmp_path) -> None:
    """Theorem 1 (ii) through the loss the TRL engine calls (TRL's GRPOTrainer._compute_loss, loss_type dapo, as
    CEPOTrainer in sampled-token mode): the teacher passes are forwards of the *same* model under r+ / r- contexts
    WITH autograd, fed through Eqs. 5 and 7; the model's gradient equals the float64 gradient of
    -sum_t A_t log pi(y_t) / N with A_t the float64 loop of Eq. 7 (a constant): nothing flows through the teachers."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from cepo.testing import build_qwen_tokenizer, build_tiny_text_lm

    tok = build_qwen_tokenizer()
    model = build_tiny_text_lm(tok).double()
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4,
                      num_generations=4, max_completion_length=6, bf16=False, loss_type="dapo")
    trainer = GRPOTrainer(model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
                          train_dataset=Dataset.from_dict({"prompt": ["x"] * 4}), processing_class=tok)
    model.eval()  # TRL's eval mode: the normaliser is num_items_in_batch (no accumulation window), no dropout
    gen = torch.Generator().manual_seed(0)
    b, p, h, t, vocab = 4, 5, 3, 6, len(tok)
    prompt = torch.randint(0, vocab, (b, p), generator=gen)
    completion = torch.randint(0, vocab, (b, t), generator=gen)
    mask = (torch.arange(t) < torch.tensor([[6], [2], [4], [1]])).long()  # right padding, as TRL's completions
    adv = torch.tensor([1.3, -0.4, 0.8, -1.1], dtype=torch.float64)
    has_neg = torch.tensor([True, False, True, False])
    lam, eps_w = 0.7, 0.5

    logp = _completion_logps(model, prompt, completion)
    hint = torch.randint(0, vocab, (2, b, h), generator=gen)
    logp_pos = _completion_logps(model, torch.cat([prompt, hint[0]], dim=1), completion)  # autograd on
    logp_neg = _completion_logps(model, torch.cat([prompt, hint[1]], dim=1), completion)
    delta = contrastive_delta(logp_pos, logp_neg, logp, has_neg, mask)
    token_adv = modulate_advantages(adv, delta, mask, lam, eps_w)
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": mask, "advantages": token_adv, "num_items_in_batch": mask.sum()}
    model.zero_grad()
    trainer._compute_loss(model, inputs).backward()
    got = [param.grad.clone() for param in model.parameters()]

    expected_adv = reference.modulated_advantages(adv, mask, lam, eps_w, logp.detach(), logp_pos.detach(),
                                                  logp_neg.detach(), has_neg)
    model.zero_grad()
    (-(expected_adv * _completion_logps(model, prompt, completion) * mask).sum() / mask.sum()).backward()
    for g, want in zip(got, (param.grad for param in model.parameters()), strict=True):  # TRL's log-probs: float32
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in got)
