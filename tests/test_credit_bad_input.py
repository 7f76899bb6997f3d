"""Bad input to the credit math raises a clear ValueError; the registry dispatches methods."""

from __future__ import annotations

import pytest
import torch

from cepo.algorithms import (
    TEACHER_PASSES,
    CreditInputs,
    compute_token_advantages,
    contrastive_delta,
    modulate_advantages,
    rlsd_delta,
    teacher_passes,
)


def _batch(b: int = 3, t: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "pos": -torch.rand(b, t),
        "neg": -torch.rand(b, t),
        "student": -torch.rand(b, t),
        "mask": torch.ones(b, t),
        "adv": torch.tensor([1.0, -1.0, 0.0])[:b],
        "has_neg": torch.tensor([True, False, True])[:b],
    }


def test_nan_logprob_is_reported_not_propagated() -> None:
    x = _batch()
    x["pos"][1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"logp_pos contains NaN or inf .*rows \[1\]"):
        contrastive_delta(x["pos"], x["neg"], x["student"], x["has_neg"], x["mask"])


def test_nan_at_masked_positions_is_ignored() -> None:
    x = _batch()
    x["pos"][0, 3] = float("-inf")
    x["mask"][0, 3] = 0
    x["neg"][1] = float("nan")  # row 1 has no negative: logp_neg is not read there
    delta = contrastive_delta(x["pos"], x["neg"], x["student"], x["has_neg"], x["mask"])
    assert torch.isfinite(delta).all() and delta[0, 3] == 0


def test_inf_delta_rejected_by_modulate() -> None:
    x = _batch()
    delta = torch.zeros(3, 4)
    delta[2, 0] = float("inf")
    with pytest.raises(ValueError, match="delta contains NaN or inf"):
        modulate_advantages(x["adv"], delta, x["mask"], 0.5, 0.5)


@pytest.mark.parametrize(
    ("lam", "eps_w", "name"), [(-0.1, 0.5, "lam"), (1.2, 0.5, "lam"), (0.5, 0.0, "eps_w"), (0.5, 1.0, "eps_w")]
)
def test_out_of_range_lam_eps(lam: float, eps_w: float, name: str) -> None:
    x = _batch()
    with pytest.raises(ValueError, match=f"^{name} must be in"):
        modulate_advantages(x["adv"], torch.zeros(3, 4), x["mask"], lam, eps_w)


def test_length_mismatches_name_the_argument() -> None:
    x = _batch()
    with pytest.raises(ValueError, match="logp_student has shape"):
        rlsd_delta(x["pos"], x["student"][:, :3])
    with pytest.raises(ValueError, match="response_mask has shape"):
        modulate_advantages(x["adv"], torch.zeros(3, 4), torch.ones(3, 5), 0.5, 0.5)
    with pytest.raises(ValueError, match="advantages has 2 rows"):
        modulate_advantages(x["adv"][:2], torch.zeros(3, 4), x["mask"], 0.5, 0.5)
    with pytest.raises(ValueError, match="has_negative must have shape"):
        contrastive_delta(x["pos"], x["neg"], x["student"], torch.tensor([True]))
    with pytest.raises(ValueError, match="response_mask must contain only 0 and 1"):
        modulate_advantages(x["adv"], torch.zeros(3, 4), x["mask"] * 2, 0.5, 0.5)


def test_registry_dispatch_and_metrics() -> None:
    x = _batch()
    common = {"advantages": x["adv"], "response_mask": x["mask"], "lam": 0.5, "eps_w": 0.5}
    grpo, metrics = compute_token_advantages("grpo", CreditInputs(**common))
    assert torch.equal(grpo, x["adv"].unsqueeze(-1).expand(3, 4))
    assert metrics == {"lambda": 0.5, "token_adv_abs_mean": float(x["adv"].abs().mean())}
    inputs = CreditInputs(
        **common, logp_student=x["student"], logp_pos=x["pos"], logp_neg=x["neg"], has_negative=x["has_neg"]
    )
    cepo, metrics = compute_token_advantages("cepo", inputs)
    delta = contrastive_delta(x["pos"], x["neg"], x["student"], x["has_neg"], x["mask"])
    assert torch.equal(cepo, modulate_advantages(x["adv"], delta, x["mask"], 0.5, 0.5))
    assert 0.0 <= metrics["clip_rate"] <= 1.0
    active = torch.tensor([True, True, False])  # row 2 has A = 0: no credit, not counted
    assert metrics["delta_pos_frac"] == pytest.approx(float((delta[active] > 0).float().mean()))
    assert metrics["delta_neg_frac"] == pytest.approx(float((delta[active] < 0).float().mean()))
    assert metrics["delta_pos_frac_adv_pos"] == pytest.approx(float((delta[0] > 0).float().mean()))
    assert metrics["has_negative_frac"] == pytest.approx(2 / 3)
    assert metrics["adv_abs_mean_before"] == pytest.approx(float(x["adv"].abs().mean()))
    rlsd, _ = compute_token_advantages("rlsd", inputs)
    assert torch.equal(rlsd[1], cepo[1])  # row without negative: CEPO falls back to RLSD
    assert (TEACHER_PASSES["grpo"], TEACHER_PASSES["rlsd"], TEACHER_PASSES["cepo"]) == ((), ("pos",), ("pos", "neg"))
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        compute_token_advantages("ppo", inputs)
    with pytest.raises(ValueError, match="needs logp_pos"):
        compute_token_advantages("rlsd", CreditInputs(**common, logp_student=x["student"]))


@pytest.mark.parametrize("method", ["grpo", "rlsd", "cepo"])
def test_lambda_zero_needs_no_teacher_and_is_grpo(method: str) -> None:
    """Once the linear schedule reaches lam = 0 the engines skip the teacher passes; the credit must then be
    GRPO (Eq. 7 with lam = 0), not an error (a paper-length run used to die at step warmup_steps + 1)."""
    x = _batch()
    assert teacher_passes(method, 0.0) == ()
    assert teacher_passes(method, 0.02) == TEACHER_PASSES[method]
    token_adv, metrics = compute_token_advantages(
        method, CreditInputs(advantages=x["adv"], response_mask=x["mask"], lam=0.0, eps_w=0.5)
    )
    assert torch.equal(token_adv, x["adv"].unsqueeze(-1).expand(3, 4) * x["mask"])
    assert metrics == {"lambda": 0.0, "token_adv_abs_mean": float(x["adv"].abs().mean())}


@pytest.mark.parametrize("method", ["rlsd", "cepo"])
def test_negative_lambda_is_still_an_error(method: str) -> None:
    x = _batch()
    inputs = CreditInputs(advantages=x["adv"], response_mask=x["mask"], lam=-0.1, eps_w=0.5, logp_student=x["student"],
                          logp_pos=x["pos"], logp_neg=x["neg"], has_negative=x["has_neg"])
    with pytest.raises(ValueError, match=r"^lam must be in"):
        compute_token_advantages(method, inputs)
