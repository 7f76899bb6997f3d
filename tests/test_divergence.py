"""Self-distillation losses (OPSD, SDPO): divergences, top-k supports, the sampled-token estimator, the EMA
teacher, and the gradient contrast of the CEPO paper (Eq. 3 vs Theorem 1 (ii)) on a tiny real LM."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cepo.algorithms import (
    CreditInputs,
    compute_token_advantages,
    divergence_on_teacher_topk,
    ema_update_,
    gather_support,
    renormalize,
    sampled_token_advantage,
    token_divergence,
    topk_divergence,
    topk_support,
    with_tail_bucket,
)

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
trl_loss_utils = pytest.importorskip("trl.experimental.sdpo.loss_utils")

ALPHAS = st.one_of(st.just(0.0), st.just(1.0), st.floats(min_value=0.01, max_value=0.99))


@st.composite
def logit_pair(draw: st.DrawFn, min_vocab: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher logits (B, T, V) in float64, at several scales (near-uniform to peaked)."""
    b, t, v = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(min_vocab, 12))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale_s, scale_t = draw(st.sampled_from([0.1, 1.0, 5.0])), draw(st.sampled_from([0.1, 1.0, 5.0]))
    student = torch.randn(b, t, v, generator=gen, dtype=torch.float64) * scale_s
    teacher = torch.randn(b, t, v, generator=gen, dtype=torch.float64) * scale_t
    return student, teacher


def direct_divergence(p_s: torch.Tensor, p_t: torch.Tensor, alpha: float) -> torch.Tensor:
    """The divergences written on probabilities: Σ p log(p / q), with 0 log 0 = 0 (float64 reference)."""

    def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)

    if alpha == 0.0:
        return kl(p_t, p_s)
    if alpha == 1.0:
        return kl(p_s, p_t)
    mixture = (1 - alpha) * p_s + alpha * p_t
    return (1 - alpha) * kl(p_s, mixture) + alpha * kl(p_t, mixture)


def analytic_student_logit_grad(p_s: torch.Tensor, p_t: torch.Tensor, alpha: float) -> torch.Tensor:
    """d divergence / d student logits, derived by hand: ∂L/∂P_S(v) = u(v), then through the softmax
    ``g = P_S ⊙ (u - Σ P_S u)``. Forward KL: u = -P_T/P_S (so g = P_S - P_T); reverse KL: u = log(P_S/P_T) + 1;
    JSD: u = (1 - α)·log(P_S/M) (the other terms cancel)."""
    if alpha == 0.0:
        return p_s - p_t
    if alpha == 1.0:
        u = torch.log(p_s) - torch.log(p_t) + 1.0
    else:
        u = (1 - alpha) * (torch.log(p_s) - torch.log((1 - alpha) * p_s + alpha * p_t))
    return p_s * (u - (p_s * u).sum(-1, keepdim=True))


# ---------------------------------------------------------------------------------------------------------------
# token_divergence
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(pair=logit_pair(), alpha=ALPHAS)
def test_token_divergence_equals_trl_compute_divergence(pair: tuple[torch.Tensor, torch.Tensor], alpha: float) -> None:
    """Values and gradients w.r.t. the student logits equal TRL's ``compute_divergence`` (same convention)."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        z_s = pair[0].to(dtype).requires_grad_(True)
        z_s_trl = pair[0].to(dtype).requires_grad_(True)
        log_t = torch.log_softmax(pair[1].to(dtype), -1)
        ours = token_divergence(torch.log_softmax(z_s, -1), log_t, alpha)
        theirs = trl_loss_utils.compute_divergence(torch.log_softmax(z_s_trl, -1), log_t, alpha)
        assert ours.shape == theirs.shape == pair[0].shape[:-1]
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, atol=tol, rtol=tol)
        weights = torch.rand(ours.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
        (grad_ours,) = torch.autograd.grad((ours * weights).sum(), z_s)
        (grad_theirs,) = torch.autograd.grad((theirs * weights).sum(), z_s_trl)
        torch.testing.assert_close(grad_ours, grad_theirs, atol=tol, rtol=tol)


@settings(max_examples=40, deadline=None)
@given(pair=logit_pair(), alpha=ALPHAS)
def test_token_divergence_equals_direct_float64_formula(pair: tuple[torch.Tensor, torch.Tensor], alpha: float) -> None:
    """KL / JSD values equal Σ p log p/q on probabilities; gradients equal the hand-derived ones, and autograd
    through the probability formula."""
    z_s = pair[0].clone().requires_grad_(True)
    p_t = torch.softmax(pair[1], -1)
    value = token_divergence(torch.log_softmax(z_s, -1), torch.log(p_t), alpha)
    z_ref = pair[0].clone().requires_grad_(True)
    reference = direct_divergence(torch.softmax(z_ref, -1), p_t, alpha)
    torch.testing.assert_close(value, reference, atol=1e-12, rtol=1e-10)
    assert torch.all(value >= -1e-12)  # a divergence
    (grad,) = torch.autograd.grad(value.sum(), z_s)
    (grad_ref,) = torch.autograd.grad(reference.sum(), z_ref)
    torch.testing.assert_close(grad, grad_ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(grad, analytic_student_logit_grad(torch.softmax(pair[0], -1), p_t, alpha),
                               atol=1e-10, rtol=1e-8)


def test_token_divergence_identical_distributions_and_teacher_gradient() -> None:
    """D(P, P) = 0 for every alpha; a detached teacher gets no gradient, a live one does (nothing detached inside)."""
    logits = torch.randn(2, 3, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits, -1)
    for alpha in (0.0, 0.3, 1.0):
        torch.testing.assert_close(token_divergence(logp, logp, alpha), torch.zeros(2, 3, dtype=torch.float64))
    z_s = logits.clone().requires_grad_(True)
    z_t = (logits + 1.0).flip(-1).requires_grad_(True)
    token_divergence(torch.log_softmax(z_s, -1), torch.log_softmax(z_t, -1).detach(), 0.5).sum().backward()
    assert z_s.grad is not None and z_t.grad is None
    token_divergence(torch.log_softmax(z_s, -1), torch.log_softmax(z_t, -1), 0.5).sum().backward()
    assert z_t.grad is not None and z_t.grad.abs().sum() > 0


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_token_divergence_zero_probability_teacher_categories(alpha: float) -> None:
    """A teacher category with probability 0 (log-prob -inf, e.g. a masked vocabulary entry) contributes 0 to the
    value and to the gradient (0 log 0 = 0), where ``F.kl_div`` gives NaN."""
    gen = torch.Generator().manual_seed(3)
    z_t = torch.randn(4, 9, dtype=torch.float64, generator=gen)
    z_t[:, [1, 5]] = float("-inf")
    z_s = torch.randn(4, 9, dtype=torch.float64, generator=gen).requires_grad_(True)
    p_t = torch.softmax(z_t, -1)
    value = token_divergence(torch.log_softmax(z_s, -1), torch.log_softmax(z_t, -1), alpha)
    assert torch.isfinite(value).all()
    torch.testing.assert_close(value, direct_divergence(torch.softmax(z_s, -1), p_t, alpha))
    (grad,) = torch.autograd.grad(value.sum(), z_s)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, analytic_student_logit_grad(torch.softmax(z_s.detach(), -1), p_t, alpha))


def test_token_divergence_bad_input() -> None:
    logp = torch.log_softmax(torch.randn(2, 5), -1)
    with pytest.raises(ValueError, match="alpha"):
        token_divergence(logp, logp, 1.5)
    with pytest.raises(ValueError, match="alpha"):
        token_divergence(logp, logp, float("nan"))
    with pytest.raises(ValueError, match="teacher_log_probs"):
        token_divergence(logp, logp[:, :4], 0.5)
    with pytest.raises(ValueError, match="student_log_probs"):
        token_divergence(torch.zeros(2, 5, dtype=torch.long), logp, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# top-k supports
# ---------------------------------------------------------------------------------------------------------------


def direct_topk_divergence(
    z_s: torch.Tensor, z_t: torch.Tensor, k: int, alpha: float, support: str, tail: bool
) -> torch.Tensor:
    """Float64 reference on probabilities: the support from a sort, then tail = 1 - Σ p or p / Σ p."""
    p_s, p_t = torch.softmax(z_s, -1), torch.softmax(z_t, -1)
    chooser = p_t if support == "teacher" else p_s
    index = torch.argsort(chooser.detach(), dim=-1, descending=True)[..., :k]
    s_on, t_on = p_s.gather(-1, index), p_t.gather(-1, index)
    if tail:
        s_on = torch.cat([s_on, 1 - s_on.sum(-1, keepdim=True)], -1)
        t_on = torch.cat([t_on, 1 - t_on.sum(-1, keepdim=True)], -1)
    else:
        s_on, t_on = s_on / s_on.sum(-1, keepdim=True), t_on / t_on.sum(-1, keepdim=True)
    return direct_divergence(s_on, t_on, alpha)


@settings(max_examples=40, deadline=None)
@given(pair=logit_pair(min_vocab=3), alpha=ALPHAS, support=st.sampled_from(["teacher", "student"]),
       tail=st.booleans(), data=st.data())
def test_topk_divergence_equals_float64_reference(
    pair: tuple[torch.Tensor, torch.Tensor], alpha: float, support: str, tail: bool, data: st.DataObject
) -> None:
    """Top-k, renormalised or with a tail bucket, on the teacher's or the student's support: values and student
    gradients equal a float64 computation on probabilities; the precomputed-teacher-top-k path agrees."""
    vocab = pair[0].shape[-1]
    k = data.draw(st.integers(1, vocab - 1))
    z_s = pair[0].clone().requires_grad_(True)
    z_ref = pair[0].clone().requires_grad_(True)
    log_s, log_t = torch.log_softmax(z_s, -1), torch.log_softmax(pair[1], -1)
    value = topk_divergence(log_s, log_t, k, alpha, support=support, tail=tail)
    reference = direct_topk_divergence(z_ref, pair[1], k, alpha, support, tail)
    torch.testing.assert_close(value, reference, atol=1e-10, rtol=1e-8)
    (grad,) = torch.autograd.grad(value.sum(), z_s)
    (grad_ref,) = torch.autograd.grad(reference.sum(), z_ref)
    # the reference forms the tail as 1 - sum(p) in probability space: when the top-k holds nearly all the mass
    # it cancels to ~1e-9 and loses digits itself (a CI run hit a 1.8e-7 relative gradient gap there)
    torch.testing.assert_close(grad, grad_ref, atol=1e-7, rtol=1e-6)
    if support == "teacher":
        values, indices = topk_support(log_t, k)
        engine_path = divergence_on_teacher_topk(log_s, values, indices, alpha, tail=tail)
        torch.testing.assert_close(engine_path, value, atol=1e-12, rtol=1e-12)
    else:  # SDPO's student support: TRL's own top-k loss from logits. TRL floors a tail's mass at 1e-7
        # (ours at the dtype's eps), so compare where both tails are larger than that.
        indices = topk_support(log_s.detach(), k)[1]
        captured = torch.stack([gather_support(log_s.detach(), indices), gather_support(log_t, indices)]).exp()
        if tail and float(1 - captured.sum(-1).max()) < 1e-6:
            return
        theirs = trl_loss_utils.compute_topk_self_distillation_loss(
            pair[0], pair[1], distillation_topk=k, distillation_alpha=alpha, distillation_add_tail=tail
        )
        torch.testing.assert_close(value.detach(), theirs, atol=1e-10, rtol=1e-8)


@settings(max_examples=40, deadline=None)
@given(pair=logit_pair(min_vocab=3), data=st.data())
def test_tail_bucket_sums_to_one_and_renormalize(pair: tuple[torch.Tensor, torch.Tensor], data: st.DataObject) -> None:
    log_p = torch.log_softmax(pair[0], -1)
    k = data.draw(st.integers(1, log_p.shape[-1]))
    values, indices = topk_support(log_p, k)
    assert values.shape == indices.shape == (*log_p.shape[:-1], k)
    torch.testing.assert_close(gather_support(log_p, indices), values)
    assert torch.all(values[..., :-1] >= values[..., 1:])  # the k largest, in order
    with_tail = with_tail_bucket(values)
    assert with_tail.shape[-1] == k + 1 and torch.isfinite(with_tail).all()
    torch.testing.assert_close(with_tail.exp().sum(-1), torch.ones(log_p.shape[:-1], dtype=torch.float64))
    torch.testing.assert_close(renormalize(values).exp().sum(-1), torch.ones(log_p.shape[:-1], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tail_bucket_of_a_complete_support_is_finite(dtype: torch.dtype) -> None:
    """k = V (or a support that rounds to all the mass): the tail is about log(eps), with a finite gradient."""
    z = torch.tensor([[8.0, -30.0, -40.0]], dtype=dtype, requires_grad=True)
    log_p = torch.log_softmax(z, -1)
    out = with_tail_bucket(log_p)
    assert torch.isfinite(out).all() and out[0, -1] <= torch.log(torch.tensor(torch.finfo(dtype).eps, dtype=dtype))
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    tiny = with_tail_bucket(torch.tensor([[-1e-3, float("-inf")]], dtype=dtype))  # small tail, accurate
    torch.testing.assert_close(tiny[0, -1], torch.log(-torch.expm1(torch.tensor(-1e-3, dtype=dtype))))


@settings(max_examples=40, deadline=None)
@given(pair=logit_pair(), alpha=ALPHAS, support=st.sampled_from(["teacher", "student"]))
def test_renormalised_topk_with_full_support_is_the_full_divergence(
    pair: tuple[torch.Tensor, torch.Tensor], alpha: float, support: str
) -> None:
    log_s, log_t = torch.log_softmax(pair[0], -1), torch.log_softmax(pair[1], -1)
    full = token_divergence(log_s, log_t, alpha)
    torch.testing.assert_close(topk_divergence(log_s, log_t, log_s.shape[-1], alpha, support=support), full,
                               atol=1e-12, rtol=1e-10)


def test_topk_bad_input() -> None:
    log_p = torch.log_softmax(torch.randn(2, 5), -1)
    with pytest.raises(ValueError, match="k must be"):
        topk_support(log_p, 0)
    with pytest.raises(ValueError, match="k must be"):
        topk_divergence(log_p, log_p, 6, 0.5)
    with pytest.raises(ValueError, match="support"):
        topk_divergence(log_p, log_p, 2, 0.5, support="both")
    with pytest.raises(ValueError, match="alpha"):
        topk_divergence(log_p, log_p, 2, -0.1)
    with pytest.raises(ValueError, match="indices"):
        gather_support(log_p, torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(ValueError, match="indices"):
        gather_support(log_p, torch.tensor([0, 1]))
    values, indices = topk_support(log_p, 2)
    with pytest.raises(ValueError, match="teacher_topk_indices"):
        divergence_on_teacher_topk(log_p, values, indices[:, :1], 0.5)


# ---------------------------------------------------------------------------------------------------------------
# sampled-token estimator
# ---------------------------------------------------------------------------------------------------------------


class _TinyPolicy(torch.nn.Module):
    """A context-conditioned next-token model: log p(tokens | context) for (B, T) integer tensors."""

    def __init__(self, vocab: int = 11, dim: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, dim, dtype=torch.float64)
        self.head = torch.nn.Linear(dim, vocab, dtype=torch.float64)

    def logits(self, context: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(context)))

    def token_logps(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(context), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _grads(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters())))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_token_advantage_is_an_unbiased_reverse_kl_gradient(seed: int) -> None:
    """Tokens y ~ pi(.|c) sampled from the policy, with A = sampled_token_advantage(log P_T(y), log pi(y)): the
    policy-gradient estimate -A grad log pi(y) averages to the exact gradient of sum_c KL(pi(.|c) || P_T(.|c)),
    computed by autograd over the whole vocabulary in float64. Checked exactly (the expectation over the vocabulary)
    and by sampling (within 6 standard errors, each computed from the per-token gradients)."""
    vocab, contexts, samples = 11, 3, 20_000
    gen = torch.Generator().manual_seed(seed)
    policy = _TinyPolicy(vocab=vocab, seed=seed)
    teacher_logp = torch.log_softmax(torch.randn(contexts, vocab, generator=gen, dtype=torch.float64), -1)
    context = torch.arange(contexts).unsqueeze(-1).expand(contexts, vocab)
    tokens = torch.arange(vocab).expand(contexts, vocab)

    student_logp = torch.log_softmax(policy.logits(torch.arange(contexts)), -1)  # (C, V)
    kl = (student_logp.exp() * (student_logp - teacher_logp)).sum()
    exact = torch.cat([g.flatten() for g in _grads(policy, kl)])

    # the estimate's gradient for every (context, token) pair: -A(c, y) grad log pi(y | c)
    l_s = policy.token_logps(context, tokens)
    advantages = sampled_token_advantage(teacher_logp, l_s, torch.ones(contexts, vocab))
    assert not advantages.requires_grad
    per_token = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
        -advantages[c, y] * l_s[c, y], list(policy.parameters()), retain_graph=True)])
        for c in range(contexts) for y in range(vocab)]).view(contexts, vocab, -1)
    probs = student_logp.detach().exp()
    expectation = (probs.unsqueeze(-1) * per_token).sum((0, 1))
    torch.testing.assert_close(expectation, exact, rtol=1e-9, atol=1e-12)

    counts = torch.stack([torch.bincount(torch.multinomial(probs[c], samples, replacement=True, generator=gen),
                                         minlength=vocab) for c in range(contexts)]).double()
    estimate = (counts.unsqueeze(-1) * per_token).sum((0, 1)) / samples
    mean_c = (probs.unsqueeze(-1) * per_token).sum(1)  # (C, P)
    variance = ((probs.unsqueeze(-1) * per_token**2).sum(1) - mean_c**2).sum(0) / samples
    assert bool(((estimate - exact).abs() <= 6 * variance.sqrt() + 1e-9).all())
    assert float(exact.abs().max()) > 1e-3  # a non-trivial gradient


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_sampled_token_advantage_policy_gradient_is_trls_sampled_token_loss(seed: int) -> None:
    """-sum A_t grad log pi(y_t) with A_t = sampled_token_advantage equals the gradient of TRL's own sampled-token
    self-distillation loss (SDPO, alpha = 1), and A_t is log P_T - log P_S on response tokens, 0 elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    policy = _TinyPolicy(seed=seed % 1000)
    context = torch.randint(0, 11, (3, 6), generator=gen)
    tokens = torch.randint(0, 11, (3, 6), generator=gen)
    mask = (torch.rand(3, 6, generator=gen) < 0.7).double()
    mask[0, 0] = 1.0
    teacher_logits = torch.randn(3, 6, 11, generator=gen, dtype=torch.float64)
    l_t = torch.log_softmax(teacher_logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    l_s = policy.token_logps(context, tokens)
    advantages = sampled_token_advantage(l_t, l_s, mask)
    assert not advantages.requires_grad
    assert torch.all(advantages[mask == 0] == 0)
    torch.testing.assert_close(advantages[mask == 1], (l_t - l_s.detach())[mask == 1])
    pg = -(advantages * policy.token_logps(context, tokens)).sum()
    trl_loss = trl_loss_utils.compute_sampled_token_self_distillation_loss(
        policy.logits(context), teacher_logits, tokens, distillation_alpha=1.0
    )
    for a, b in zip(_grads(policy, (trl_loss * mask).sum()), _grads(policy, pg), strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_sampled_token_advantage_bad_input() -> None:
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="student_logp"):
        sampled_token_advantage(x, torch.zeros(2, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="teacher_logp"):
        sampled_token_advantage(torch.full((2, 3), float("nan")), x, torch.ones(2, 3))
    # NaN outside the mask is fine
    out = sampled_token_advantage(torch.tensor([[0.0, float("nan")]]), torch.tensor([[-1.0, 0.0]]),
                                  torch.tensor([[1, 0]]))
    assert out.tolist() == [[1.0, 0.0]]


# ---------------------------------------------------------------------------------------------------------------
# EMA teacher
# ---------------------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(rate=st.floats(min_value=0.0, max_value=1.0), seed=st.integers(0, 2**31 - 1))
def test_ema_update_matches_the_formula(rate: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((3, 4), (5,))]
    student = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((3, 4), (5,))]
    expected = [(1 - rate) * t + rate * s for t, s in zip(teacher, student, strict=True)]
    before = [t.clone() for t in student]
    ema_update_(teacher, student, rate)
    for t, e in zip(teacher, expected, strict=True):
        torch.testing.assert_close(t, e, atol=1e-12, rtol=1e-12)
    for s, b in zip(student, before, strict=True):
        assert torch.equal(s, b)


def test_ema_update_endpoints_modules_and_bad_input() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 1e8)
    original = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_(teacher.parameters(), student.parameters(), 0.0)  # rate 0: unchanged, bit for bit
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in original.items())
    ema_update_(dict(teacher.named_parameters()), dict(student.named_parameters()), 1.0)  # rate 1: a copy
    assert all(torch.equal(teacher.state_dict()[k], student.state_dict()[k]) for k in original)
    assert all(p.grad is None and p.requires_grad for p in teacher.parameters())

    # SDPO's rate on a bfloat16 teacher (the student is cast)
    low = [torch.zeros(2, dtype=torch.bfloat16)]
    ema_update_(low, [torch.ones(2)], 0.05)
    torch.testing.assert_close(low[0], torch.full((2,), 0.05, dtype=torch.bfloat16))

    with pytest.raises(ValueError, match="rate"):
        ema_update_([torch.zeros(2)], [torch.zeros(2)], 1.5)
    with pytest.raises(ValueError, match="shape"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], 0.5)
    with pytest.raises(ValueError, match="tensors"):
        ema_update_([torch.zeros(2)], [torch.zeros(2), torch.zeros(2)], 0.5)
    with pytest.raises(ValueError, match="names"):
        ema_update_({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, 0.5)


# ---------------------------------------------------------------------------------------------------------------
# CEPO paper, Eq. 3 vs Theorem 1 (ii), on a tiny real LM
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm_setup() -> dict[str, object]:
    """The tiny Qwen3 text LM in float64, a prompt, the r+ / r- hints and a response sampled from the student."""
    from cepo.testing import build_qwen_tokenizer, build_tiny_text_lm

    tokenizer = build_qwen_tokenizer()
    model = build_tiny_text_lm(tokenizer).double().eval()
    prompt = torch.tensor(tokenizer.encode("What is 2+3? Answer in a box."))
    pos_hint = torch.tensor(tokenizer.encode(" Here is a sample answer: 5"))
    neg_hint = torch.tensor(tokenizer.encode(" Here is a sample answer: 7"))
    gen = torch.Generator().manual_seed(0)
    response: list[int] = []
    with torch.no_grad():
        for _ in range(6):
            logits = model(input_ids=torch.cat([prompt, torch.tensor(response, dtype=torch.long)])[None]).logits
            response.append(int(torch.multinomial(torch.softmax(logits[0, -1], -1), 1, generator=gen)))
    return {"model": model, "prompt": prompt, "pos": pos_hint, "neg": neg_hint, "response": torch.tensor(response)}


def _response_logits(model: torch.nn.Module, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """(T, V) next-token logits at the response positions of [context + response]."""
    logits = model(input_ids=torch.cat([context, response])[None]).logits[0]
    return logits[context.shape[0] - 1 : context.shape[0] - 1 + response.shape[0]]


def _flat_grad(model: torch.nn.Module, loss: torch.Tensor) -> torch.Tensor:
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)
    return torch.cat([
        (g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, model.parameters(), strict=True)
    ])


def _span_residual(basis: torch.Tensor, vector: torch.Tensor) -> float:
    """Relative norm of the part of ``vector`` outside the span of the rows of ``basis``."""
    coef = torch.linalg.lstsq(basis.T, vector[:, None]).solution
    return float((vector - (basis.T @ coef)[:, 0]).norm() / vector.norm())


def test_opsd_gradient_spans_the_vocabulary_cepo_gradient_spans_sampled_tokens(
    tiny_lm_setup: dict[str, object],
) -> None:
    """Eq. 3 vs Theorem 1 (ii). W.r.t. the student logits z_t, ∇_z log π(v) = e_v - p_t. CEPO's gradient is
    -A_t (e_{y_t} - p_t): in the span of the sampled token's direction, with the teacher entering only through the
    constant A_t. OPSD's (forward KL) is -Σ_v P_T(v) (e_v - p_t), a teacher-weighted sum over the whole vocabulary,
    and its JSD is not in that span either. The same holds for the parameters: CEPO's ∇_θ lies in
    span{∇_θ log π(y_t)}, OPSD's does not."""
    model, prompt, response = tiny_lm_setup["model"], tiny_lm_setup["prompt"], tiny_lm_setup["response"]
    assert isinstance(model, torch.nn.Module) and isinstance(prompt, torch.Tensor)
    assert isinstance(response, torch.Tensor)
    n_tokens = response.shape[0]
    z = _response_logits(model, prompt, response)  # (T, V), carries the gradient
    log_p = torch.log_softmax(z, -1)
    p = log_p.exp().detach()
    logp_sampled = log_p.gather(-1, response[:, None])[:, 0]  # log π(y_t), with gradient
    z_pos = _response_logits(model, torch.cat([prompt, tiny_lm_setup["pos"]]), response)  # P_T+, with gradient
    z_neg = _response_logits(model, torch.cat([prompt, tiny_lm_setup["neg"]]), response)  # P_T-, with gradient
    logp_pos = torch.log_softmax(z_pos, -1).gather(-1, response[:, None])[:, 0]
    logp_neg = torch.log_softmax(z_neg, -1).gather(-1, response[:, None])[:, 0]
    sampled_dirs = torch.eye(z.shape[-1], dtype=z.dtype)[response] - p  # e_{y_t} - p_t, (T, V)

    # CEPO: modulated advantages from the method registry. The teacher log-probs given to it still carry gradients:
    # the stop-gradient is the algorithm's, not the test's.
    token_adv, _ = compute_token_advantages("cepo", CreditInputs(
        advantages=torch.tensor([1.3], dtype=torch.float64), response_mask=torch.ones(1, n_tokens),
        lam=0.5, eps_w=0.5, logp_student=logp_sampled[None], logp_pos=logp_pos[None], logp_neg=logp_neg[None],
        has_negative=torch.tensor([True])))
    assert not token_adv.requires_grad and torch.all(token_adv > 0)
    cepo_loss = -(token_adv[0] * logp_sampled).sum()
    (g_cepo,) = torch.autograd.grad(cepo_loss, z, retain_graph=True)
    torch.testing.assert_close(g_cepo, -token_adv[0][:, None] * sampled_dirs, atol=1e-12, rtol=1e-10)

    # OPSD: full-vocabulary divergence to the stop-gradient teacher context distribution (Eq. 3)
    teacher_log_p = torch.log_softmax(z_pos, -1).detach()
    p_teacher = teacher_log_p.exp()
    unsampled = torch.ones_like(p_teacher, dtype=torch.bool)
    unsampled[:, response] = False
    assert float((p_teacher * unsampled).sum(-1).min()) > 0.5  # most teacher mass sits on never-sampled tokens
    opsd_fkl = token_divergence(log_p, teacher_log_p, 0.0).sum()
    (g_fkl,) = torch.autograd.grad(opsd_fkl, z, retain_graph=True)
    eq3 = -(p_teacher[:, :, None] * (torch.eye(z.shape[-1], dtype=z.dtype)[None] - p[:, None, :])).sum(1)
    torch.testing.assert_close(g_fkl, eq3, atol=1e-12, rtol=1e-10)  # -Σ_v P_T(v) ∇_z log π(v), exactly
    opsd_jsd = token_divergence(log_p, teacher_log_p, 0.5).sum()
    (g_jsd,) = torch.autograd.grad(opsd_jsd, z, retain_graph=True)
    for t in range(n_tokens):
        direction = sampled_dirs[t : t + 1]
        assert _span_residual(direction, g_cepo[t]) < 1e-10
        assert _span_residual(direction, g_fkl[t]) > 0.5
        assert _span_residual(direction, g_jsd[t]) > 0.5

    # The same statement in parameter space: ∇_θ CEPO ∈ span{∇_θ log π(y_t)}_t, ∇_θ OPSD is not. (Qwen3's RMSNorm
    # computes in float32 even in a float64 model, so parameter gradients are linear only to ~1e-7.)
    basis = torch.stack([_flat_grad(model, logp_sampled[t]) for t in range(n_tokens)])  # (T, P)
    grad_cepo = _flat_grad(model, cepo_loss)
    torch.testing.assert_close(grad_cepo, -(token_adv[0][:, None] * basis).sum(0), atol=1e-5, rtol=1e-5)
    assert _span_residual(basis, grad_cepo) < 1e-5
    assert _span_residual(basis, _flat_grad(model, opsd_fkl)) > 0.1
    assert _span_residual(basis, _flat_grad(model, opsd_jsd)) > 0.1
    # OPSD / SDPO in sampled-token mode (reverse-KL estimator) stay in the span too
    sampled = -(sampled_token_advantage(logp_pos[None], logp_sampled[None], torch.ones(1, n_tokens))[0]
                * logp_sampled).sum()
    assert _span_residual(basis, _flat_grad(model, sampled)) < 1e-5
