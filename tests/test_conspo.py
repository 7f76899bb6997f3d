"""ConSPO (arXiv 2605.12969): margin curriculum, scores, the InfoNCE loss against a float64 loop, skipped groups,
Lemma 2, the closed-form coefficients, and the micro-batch surrogate built from them."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cepo.algorithms import conspo_coefficients, conspo_loss, conspo_margin, conspo_scores

# ---------------------------------------------------------------------------------------------------------------
# margin curriculum
# ---------------------------------------------------------------------------------------------------------------


def test_conspo_margin_half_cosine_ramp() -> None:
    m, alpha = 0.01, 0.3
    assert conspo_margin(0.0, m, alpha) == 0.0
    assert conspo_margin(alpha / 2, m, alpha) == pytest.approx(m / 2, abs=1e-15)
    assert conspo_margin(alpha, m, alpha) == pytest.approx(m, abs=1e-15)
    assert conspo_margin(0.7, m, alpha) == conspo_margin(1.0, m, alpha) == pytest.approx(m, abs=1e-15)
    assert conspo_margin(0.1, m, alpha) == pytest.approx(m / 2 * (1 - math.cos(math.pi / 3)))
    ramp = [conspo_margin(i / 100, m, alpha) for i in range(101)]
    assert all(a <= b for a, b in itertools.pairwise(ramp))
    assert conspo_margin(0.5, 0.0, 1.0) == 0.0


@pytest.mark.parametrize(
    ("args", "name"),
    [((-0.1, 0.01, 0.3), "progress"), ((1.01, 0.01, 0.3), "progress"), ((0.5, -0.01, 0.3), "target_margin"),
     ((0.5, float("inf"), 0.3), "target_margin"), ((0.5, 0.01, 0.0), "warmup_ratio"),
     ((0.5, 0.01, 1.5), "warmup_ratio"), ((float("nan"), 0.01, 0.3), "progress")],
)
def test_conspo_margin_bad_input(args: tuple[float, float, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        conspo_margin(*args)


# ---------------------------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------------------------


def test_conspo_scores_length_normalised() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0, float("nan")], [-0.5, -0.5, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    scores = conspo_scores(logp, mask)
    torch.testing.assert_close(scores, torch.tensor([-2.0, -0.5]))
    scores.sum().backward()
    torch.testing.assert_close(logp.grad, mask / mask.sum(-1, keepdim=True))
    with pytest.raises(ValueError, match="response_mask"):
        conspo_scores(logp.detach(), torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="logp"):
        conspo_scores(logp.detach(), torch.ones(2, 4))
    with pytest.raises(ValueError, match="response_mask"):
        conspo_scores(logp.detach(), torch.ones(2, 3))


# ---------------------------------------------------------------------------------------------------------------
# loss and coefficients
# ---------------------------------------------------------------------------------------------------------------


def reference_objectives(
    scores: list[float], rewards: list[float], group_ids: list[int], tau: float, margin: float, threshold: float
) -> dict[int, float]:
    """Ĵ(q) of every valid group, written as the paper's Eq. 13 with a Python float64 loop (no logsumexp)."""
    out = {}
    for gid in sorted(set(group_ids)):
        pos = [s for s, r, g in zip(scores, rewards, group_ids, strict=True) if g == gid and r >= threshold]
        neg = [s for s, r, g in zip(scores, rewards, group_ids, strict=True) if g == gid and r < threshold]
        if not pos or not neg:
            continue
        total = 0.0
        for s_pos in pos:
            numerator = math.exp((s_pos - margin) / tau)
            total += tau * math.log(numerator / (numerator + sum(math.exp(s / tau) for s in neg)))
        out[gid] = total / len(pos)
    return out


@st.composite
def conspo_batch(draw: st.DrawFn) -> dict[str, object]:
    """Random groups (sizes 1-6, some all-correct / all-wrong), binary or graded rewards, scores like mean log-probs."""
    n_groups = draw(st.integers(1, 5))
    sizes = [draw(st.integers(1, 6)) for _ in range(n_groups)]
    group_ids = [g for g, size in enumerate(sizes) for _ in range(size)]
    perm = draw(st.permutations(range(len(group_ids))))
    group_ids = [group_ids[i] for i in perm]  # groups interleaved in the batch
    graded = draw(st.booleans())
    reward = st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]) if graded else st.sampled_from([0.0, 1.0])
    rewards = [draw(reward) for _ in group_ids]
    scores = [draw(st.floats(min_value=-4.0, max_value=0.0)) for _ in group_ids]
    return {
        "scores": scores, "rewards": rewards, "group_ids": group_ids,
        "tau": draw(st.sampled_from([0.05, 0.3, 1.0, 10.0])),
        "margin": draw(st.sampled_from([0.0, 0.01, 0.5])),
        "threshold": draw(st.sampled_from([0.5, 1.0])),
    }


@settings(max_examples=80, deadline=None)
@given(batch=conspo_batch())
def test_conspo_loss_and_coefficients_against_float64_loop(batch: dict[str, object]) -> None:
    """The loss equals -mean_q Ĵ(q) of the loop; the closed-form coefficients equal autograd's d loss / d scores;
    they sum to 0 within each group and are 0 in skipped groups."""
    scores = torch.tensor(batch["scores"], dtype=torch.float64, requires_grad=True)
    args = (batch["rewards"], batch["group_ids"], batch["tau"], batch["margin"], batch["threshold"])
    objectives = reference_objectives(batch["scores"], *args)  # type: ignore[arg-type]
    loss = conspo_loss(scores, *args)  # type: ignore[arg-type]
    assert loss.dim() == 0 and loss.grad_fn is not None
    expected = -sum(objectives.values()) / len(objectives) if objectives else 0.0
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, scores)
    coefficients = conspo_coefficients(scores, *args)  # type: ignore[arg-type]
    assert not coefficients.requires_grad and coefficients.shape == scores.shape
    torch.testing.assert_close(coefficients, grad, atol=1e-12, rtol=1e-9)
    ids = torch.tensor(batch["group_ids"])
    for gid in set(batch["group_ids"]):  # type: ignore[arg-type]
        in_group = ids == gid
        assert float(coefficients[in_group].sum()) == pytest.approx(0.0, abs=1e-12)
        if gid not in objectives:
            assert torch.all(coefficients[in_group] == 0)


def test_lemma2_positive_and_negative_gradients() -> None:
    """One group: ∂Ĵ/∂s_i⁺ = (1 - P_i⁺)/N⁺ and ∂Ĵ/∂s_j⁻ = -(1/N⁺) Σ_i P_ij⁻ (margin inside P), via autograd of -loss;
    harder negatives (higher scores) are pushed down more, in the ratio exp((s_j - s_k)/τ)."""
    tau, margin = 0.7, 0.2
    values = [-0.3, -1.1, -0.2, -2.5, -0.9]
    rewards = [1.0, 1.0, 0.0, 0.0, 0.0]
    scores = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    objective = -conspo_loss(scores, rewards, [7] * 5, tau, margin)
    (grad,) = torch.autograd.grad(objective, scores)
    pos, neg = values[:2], values[2:]
    denominators = [math.exp((s - margin) / tau) + sum(math.exp(n / tau) for n in neg) for s in pos]
    for i, s in enumerate(pos):
        p_pos = math.exp((s - margin) / tau) / denominators[i]
        assert float(grad[i]) == pytest.approx((1 - p_pos) / len(pos), rel=1e-12)
    for j, s in enumerate(neg):
        p_neg = [math.exp(s / tau) / d for d in denominators]
        assert float(grad[2 + j]) == pytest.approx(-sum(p_neg) / len(pos), rel=1e-12)
    assert float(grad[2] / grad[4]) == pytest.approx(math.exp((neg[0] - neg[2]) / tau), rel=1e-12)


def test_skipped_groups() -> None:
    """All-correct and all-wrong groups change nothing; a batch with no valid group gives a zero that still has a
    grad_fn on the scores, with gradient 0, and zero coefficients."""
    base_scores = [-0.5, -1.0, -0.7]
    extra_scores = [-0.1, -0.2, -3.0, -2.0]
    scores = torch.tensor([*base_scores, *extra_scores], dtype=torch.float64, requires_grad=True)
    rewards = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    group_ids = ["q0"] * 3 + ["all-correct"] * 2 + ["all-wrong"] * 2
    only_base = conspo_loss(torch.tensor(base_scores, dtype=torch.float64), rewards[:3], group_ids[:3], 10.0, 0.01)
    with_extra = conspo_loss(scores, rewards, group_ids, 10.0, 0.01)
    assert float(with_extra.detach()) == pytest.approx(float(only_base.detach()), rel=1e-14)
    (grad,) = torch.autograd.grad(with_extra, scores)
    assert torch.all(grad[3:] == 0)

    invalid = torch.tensor(extra_scores, dtype=torch.float64, requires_grad=True)
    loss = conspo_loss(invalid, rewards[3:], group_ids[3:], 10.0, 0.01)
    assert float(loss.detach()) == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(invalid.grad, torch.zeros(4, dtype=torch.float64))
    zero_coefficients = conspo_coefficients(invalid, rewards[3:], group_ids[3:], 10.0, 0.01)
    assert torch.equal(zero_coefficients, torch.zeros(4, dtype=torch.float64))
    # tensor group ids and tensor rewards are accepted
    tensor_ids = conspo_loss(scores, torch.tensor(rewards), torch.tensor([0, 0, 0, 1, 1, 2, 2]), 10.0, 0.01)
    assert float(tensor_ids.detach()) == pytest.approx(float(with_extra.detach()), rel=1e-14)


def test_numerically_stable_at_extreme_scales() -> None:
    """Ĵ is invariant to shifting every score by a constant: at scores near -1000 and τ = 0.01 (exp overflows and
    underflows by hundreds of orders of magnitude) the loss and coefficients equal those of the unshifted batch."""
    values = [-0.3, -0.31, -0.2, -0.5, -0.25, -0.26]
    rewards = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    group_ids = [0, 0, 0, 0, 1, 1]
    near = torch.tensor(values, dtype=torch.float64)
    far = (near - 1000.0).requires_grad_(True)
    for tau in (0.01, 10.0):
        loss_far = conspo_loss(far, rewards, group_ids, tau, 0.05)
        assert torch.isfinite(loss_far)
        reference = -sum(reference_objectives(values, rewards, group_ids, tau, 0.05, 0.5).values()) / 2
        assert float(loss_far.detach()) == pytest.approx(reference, rel=1e-6)
        coefficients = conspo_coefficients(far, rewards, group_ids, tau, 0.05)
        torch.testing.assert_close(coefficients, conspo_coefficients(near, rewards, group_ids, tau, 0.05),
                                   atol=1e-9, rtol=1e-6)
        (grad,) = torch.autograd.grad(loss_far, far)
        torch.testing.assert_close(coefficients, grad, atol=1e-12, rtol=1e-9)
    # float32 with the paper's τ = 10: scores of mean log-probs differ by ~0.01-0.3, the softmax is near uniform
    scores32 = torch.tensor(values, dtype=torch.float32, requires_grad=True)
    loss32 = conspo_loss(scores32, rewards, group_ids, 10.0, 0.01)
    (grad32,) = torch.autograd.grad(loss32, scores32)
    torch.testing.assert_close(conspo_coefficients(scores32, rewards, group_ids, 10.0, 0.01), grad32)


def test_conspo_bad_input() -> None:
    scores = torch.zeros(3)
    with pytest.raises(ValueError, match="scores"):
        conspo_loss(torch.zeros(3, 1), [1, 0, 0], [0, 0, 0], 10.0, 0.0)
    with pytest.raises(ValueError, match="scores"):
        conspo_loss(torch.tensor([0.0, float("nan"), 0.0]), [1, 0, 0], [0, 0, 0], 10.0, 0.0)
    with pytest.raises(ValueError, match="rewards"):
        conspo_loss(scores, [1, 0], [0, 0, 0], 10.0, 0.0)
    with pytest.raises(ValueError, match="rewards"):
        conspo_coefficients(scores, [1, float("nan"), 0], [0, 0, 0], 10.0, 0.0)
    with pytest.raises(ValueError, match="group_ids"):
        conspo_loss(scores, [1, 0, 0], [0, 0], 10.0, 0.0)
    with pytest.raises(ValueError, match="tau"):
        conspo_loss(scores, [1, 0, 0], [0, 0, 0], 0.0, 0.0)
    with pytest.raises(ValueError, match="margin"):
        conspo_coefficients(scores, [1, 0, 0], [0, 0, 0], 10.0, float("inf"))


# ---------------------------------------------------------------------------------------------------------------
# the coefficients as a per-row weighted log-likelihood, across micro-batches
# ---------------------------------------------------------------------------------------------------------------


class _TinyPolicy(torch.nn.Module):
    def __init__(self, vocab: int = 9, dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim, dtype=torch.float64)
        self.head = torch.nn.Linear(dim, vocab, dtype=torch.float64)

    def token_logps(self, context: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.head(torch.tanh(self.embed(context)))
        return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), micro=st.integers(1, 4))
def test_coefficients_train_conspo_exactly_across_micro_batches(seed: int, micro: int) -> None:
    """Σ_k c_k·s_k, summed over micro-batches that split groups, has exactly the ConSPO loss gradient w.r.t. the
    policy parameters at the policy the scores came from."""
    gen = torch.Generator().manual_seed(seed)
    policy = _TinyPolicy()
    batch, length = 8, 5
    context = torch.randint(0, 9, (batch, length), generator=gen)
    tokens = torch.randint(0, 9, (batch, length), generator=gen)
    mask = torch.ones(batch, length)
    mask[:, 3:] = (torch.rand(batch, 2, generator=gen) < 0.5).float()
    rewards = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    group_ids = [0, 0, 1, 1, 0, 1, 2, 2]
    args = (rewards, group_ids, 1.0, 0.01)

    params = list(policy.parameters())
    scores = conspo_scores(policy.token_logps(context, tokens), mask)
    full = torch.autograd.grad(conspo_loss(scores, *args), params)
    coefficients = conspo_coefficients(scores, *args)
    accumulated = [torch.zeros_like(p) for p in params]
    for start in range(0, batch, micro):
        rows = slice(start, start + micro)
        micro_scores = conspo_scores(policy.token_logps(context[rows], tokens[rows]), mask[rows])
        for acc, g in zip(accumulated, torch.autograd.grad((coefficients[rows] * micro_scores).sum(), params),
                          strict=True):
            acc += g
    for a, b in zip(full, accumulated, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
