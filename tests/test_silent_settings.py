"""Settings under which a run would silently compute something other than what was asked are refused, one line
naming the key and the fix (issue 17, section 1): a lambda that is 0 at every step (RLSD / CEPO would train GRPO),
and the TRL loss options that break ConSPO's exactness at ratio 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cepo.algorithms import linear_lambda
from cepo.config import CEPOConfig
from cepo.integrations.trl import CEPOGRPOConfig
from cepo.testing.trl_runs import tiny_run_settings


@pytest.mark.parametrize("method", ["rlsd", "cepo"])
@pytest.mark.parametrize(
    ("settings", "keys"),
    [
        ({"lam0": 0.0}, ["cepo.lam0=0", "cepo.method=grpo"]),
        ({"warmup_steps": 0}, ["cepo.warmup_steps=0", "cepo.lambda_schedule=constant", "cepo.method=grpo"]),
    ],
    ids=["lam0", "warmup"],
)
def test_lambda_always_zero_is_refused(method: str, settings: dict[str, Any], keys: list[str]) -> None:
    full = {"lam0": 0.5, "warmup_steps": 25, **settings}
    # the refused settings do give lambda 0 at every step (the paper's schedule, Sec. 3.4)
    assert all(linear_lambda(step, full["lam0"], full["warmup_steps"]) == 0.0 for step in range(100))
    with pytest.raises(ValueError) as info:
        CEPOConfig(method=method, **settings)
    message = str(info.value)
    assert "\n" not in message and all(key in message for key in keys)
    with pytest.raises(ValueError, match="plain GRPO"):  # the TRL fields say the same
        CEPOGRPOConfig(output_dir="unused", cepo_method=method, use_cpu=True,
                       **{f"cepo_{key}": value for key, value in settings.items()})


def test_lambda_zero_allowed_where_it_is_meant() -> None:
    """The constant schedule with warmup_steps 0 is a real lambda; methods without lambda do not care."""
    assert CEPOConfig(method="cepo", lambda_schedule="constant", warmup_steps=0).schedule(50) == 0.5
    for method in ("grpo", "opsd", "sdpo", "conspo"):
        CEPOConfig(method=method, lam0=0.0, warmup_steps=0)


@pytest.mark.parametrize(
    ("settings", "key", "fix"),
    [
        ({"loss_type": "cispo"}, "loss_type", "loss_type='dapo'"),
        ({"loss_type": "grpo"}, "loss_type", "loss_type='dapo'"),
        ({"beta": 0.04}, "beta", "beta=0"),
        ({"top_entropy_quantile": 0.2}, "top_entropy_quantile", "top_entropy_quantile=1.0"),
        ({"off_policy_mask_threshold": 0.5}, "off_policy_mask_threshold", "off_policy_mask_threshold=None"),
        ({"entropy_coef": 0.01}, "entropy_coef", "entropy_coef=0"),
        ({"use_adaptive_entropy": True}, "entropy_coef", "use_adaptive_entropy=False"),
        ({"use_vllm": True}, "vllm_importance_sampling_correction", "vllm_importance_sampling_correction=False"),
        ({"steps_per_generation": 2, "per_device_train_batch_size": 8}, "steps_per_generation",
         "num_iterations=1"),
        ({"num_iterations": 2}, "num_iterations", "ppo_epochs=1"),
    ],
)
def test_conspo_trl_settings_that_break_ratio_one(tmp_path: Path, settings: dict[str, Any], key: str,
                                                 fix: str) -> None:
    """ConSPO's advantages are its gradient at ratio 1: every TRL option that reweights, clips or drops tokens
    (or adds a gradient) is refused at config time, naming the option and the value that fixes it."""
    with pytest.raises(ValueError) as info:
        CEPOGRPOConfig(**tiny_run_settings(tmp_path, "conspo", **settings))
    message = str(info.value)
    assert "\n" not in message and key in message and fix in message
    for method in ("grpo", "cepo"):  # only ConSPO needs ratio 1
        if "use_vllm" not in settings:
            CEPOGRPOConfig(**tiny_run_settings(tmp_path, method, **settings))


def test_conspo_trl_defaults_accepted(tmp_path: Path) -> None:
    args = CEPOGRPOConfig(**tiny_run_settings(tmp_path, "conspo", use_vllm=True,
                                              vllm_importance_sampling_correction=False))
    assert args.loss_type == "dapo" and args.cepo_config().method == "conspo"


def test_conspo_truncated_rollout_is_absent_from_its_group() -> None:
    """TRL's mask_truncated_completions zeroes a truncated rollout's completion mask: it has no token in the loss, so
    its score can carry no gradient and it is absent from its group (not a negative). The advantages of the others
    are the autograd gradient of the objective over the untruncated rollouts only (a float64 forward)."""
    import torch

    from cepo.algorithms import conspo_loss, rollout_scores, sequence_advantages

    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(8, 5, generator=gen, dtype=torch.float64) * 3
    mask = torch.ones(8, 5, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2] = 0  # truncated, masked out: the only negative of group 0 besides row 3
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    adv = sequence_advantages("conspo", rewards, groups, scores=rollout_scores(logp, mask),
                              options={"tau": 10.0, "margin": 0.01, "threshold": 0.5})
    assert adv[2] == 0
    kept = [0, 1, 3, 4, 5, 6, 7]
    scores = torch.tensor([float((logp[i] * mask[i]).sum() / mask[i].sum()) for i in kept], dtype=torch.float64,
                          requires_grad=True)
    (grad,) = torch.autograd.grad(conspo_loss(scores, rewards[kept], [groups[i] for i in kept], 10.0, 0.01), scores)
    torch.testing.assert_close(adv[kept], -grad, rtol=1e-12, atol=1e-14)
    # as a negative, row 2 would have changed the positives' advantages of group 0
    unmasked = mask.clone()
    unmasked[2] = 1
    as_negative = sequence_advantages("conspo", rewards, groups, scores=rollout_scores(logp, unmasked),
                                      options={"tau": 10.0, "margin": 0.01, "threshold": 0.5})
    assert not torch.allclose(as_negative[:2], adv[:2])


def test_save_steps_inside_generation_rounds_warns(tmp_path: Path) -> None:
    """Two optimizer steps per generation round: save_steps=1 saves checkpoints that cannot be resumed."""
    import warnings

    layout = {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "steps_per_generation": 4,
              "save_strategy": "steps"}
    with pytest.warns(UserWarning, match=r"save_steps=1 saves checkpoints inside generation rounds.*multiple of 2"):
        CEPOGRPOConfig(**tiny_run_settings(tmp_path, "grpo", save_steps=1, **layout))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CEPOGRPOConfig(**tiny_run_settings(tmp_path, "grpo", save_steps=4, **layout))
    assert not [w for w in caught if "generation rounds" in str(w.message)]
