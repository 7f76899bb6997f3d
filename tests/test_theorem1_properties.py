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
    ppo_clip_loss,
    rlsd_delta,
)

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
    """A context-conditioned next-token model with its own parameters."""

    def __init__(self, vocab: int, dim: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def token_logps(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """log p(tokens[b, t] | context[b, t]) for (B, T) integer tensors."""
        logits = self.head(torch.tanh(self.embed(context)))
        return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 4),
    t=st.integers(1, 8),
    seed=st.integers(0, 10_000),
    lam=LAMBDAS,
    eps_w=EPS_W,
)
def test_leakage_free_gradient(b: int, t: int, seed: int, lam: float, eps_w: float) -> None:
    """Theorem 1 (ii): teacher log-probs produced by a module with its own parameters, fed through
    Eqs. 5 and 7 and the PPO surrogate, give that module no gradient, and the policy gradient equals
    the gradient of -mean_t A_t log pi(y_t) (A_t constant)."""
    vocab, dim = 11, 5
    gen = torch.Generator().manual_seed(seed)
    policy = _TinyPolicy(vocab, dim, seed)
    teacher = _TinyPolicy(vocab, dim, seed + 1)
    context = torch.randint(0, vocab, (b, t), generator=gen)
    tokens = torch.randint(0, vocab, (b, t), generator=gen)
    hint_pos = torch.randint(0, vocab, (b, t), generator=gen)
    hint_neg = torch.randint(0, vocab, (b, t), generator=gen)
    mask = (torch.rand(b, t, generator=gen) < 0.8).float()
    mask[:, 0] = 1.0
    adv = torch.randn(b, generator=gen)

    logp = policy.token_logps(context, tokens)
    # teacher passes WITH autograd enabled: the stop-gradient must come from the algorithm itself
    logp_pos = teacher.token_logps(hint_pos, tokens)
    logp_neg = teacher.token_logps(hint_neg, tokens)
    has_neg = torch.rand(b, generator=gen) < 0.5
    delta = contrastive_delta(logp_pos, logp_neg, logp, has_neg, mask)
    assert not delta.requires_grad  # Eq. 5's stop-gradient
    token_adv = modulate_advantages(adv, delta, mask, lam, eps_w)
    loss = ppo_clip_loss(logp, logp.detach(), token_adv, mask)
    loss.backward()

    assert not token_adv.requires_grad
    for param in teacher.parameters():
        assert param.grad is None or torch.count_nonzero(param.grad) == 0

    expected_policy = _TinyPolicy(vocab, dim, seed)
    reference = -(token_adv * expected_policy.token_logps(context, tokens) * mask).sum() / mask.sum()
    reference.backward()
    for got, want in zip(policy.parameters(), expected_policy.parameters(), strict=True):
        assert want.grad is not None
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(batch=credit_batch(), lam=LAMBDAS, eps_w=EPS_W)
def test_rlsd_containment(batch: dict[str, torch.Tensor], lam: float, eps_w: float) -> None:
    """Theorem 1 (iii): P_T- = P_S gives RLSD exactly, and so does a row with G- empty."""
    pos, student, mask = batch["logp_pos"], batch["logp_student"], batch["mask"]
    all_neg = torch.ones_like(batch["has_neg"])
    no_neg = torch.zeros_like(batch["has_neg"])
    rlsd = rlsd_delta(pos, student, mask)
    assert torch.equal(contrastive_delta(pos, student.clone(), student, all_neg, mask), rlsd)
    assert torch.equal(contrastive_delta(pos, batch["logp_neg"], student, no_neg, mask), rlsd)
    mixed = contrastive_delta(pos, batch["logp_neg"], student, batch["has_neg"], mask)
    rows = ~batch["has_neg"]
    assert torch.equal(mixed[rows], rlsd[rows])
    adv = batch["adv"]
    assert torch.equal(
        modulate_advantages(adv, contrastive_delta(pos, student, student, all_neg, mask), mask, lam, eps_w),
        modulate_advantages(adv, rlsd, mask, lam, eps_w),
    )


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
@given(batch=credit_batch(), lam=LAMBDAS, eps_w=EPS_W)
def test_filler_tokens_get_unit_weight(batch: dict[str, torch.Tensor], lam: float, eps_w: float) -> None:
    """Proposition 1, case 3: where P_T+ = P_T- (delta = 0) the weight is 1 and A_t = A."""
    pos, mask, adv = batch["logp_pos"], batch["mask"], batch["adv"]
    delta = contrastive_delta(pos, pos.clone(), batch["logp_student"], torch.ones_like(batch["has_neg"]), mask)
    assert torch.all(delta == 0)
    assert torch.all(evidence_weights(adv, delta) == 1)
    out = modulate_advantages(adv, delta, mask, lam, eps_w)
    torch.testing.assert_close(out, adv.unsqueeze(-1) * mask, rtol=1e-12, atol=0)


@settings(max_examples=100, deadline=None)
@given(batch=credit_batch(), eps_w=EPS_W)
def test_lambda_zero_is_grpo(batch: dict[str, torch.Tensor], eps_w: float) -> None:
    """lam = 0 leaves the GRPO advantage untouched on every token."""
    delta = rlsd_delta(batch["logp_pos"], batch["logp_student"], batch["mask"])
    out = modulate_advantages(batch["adv"], delta, batch["mask"], 0.0, eps_w)
    assert torch.equal(out, batch["adv"].unsqueeze(-1) * batch["mask"])
