"""verl settings under which a run would silently compute something other than what was asked are refused (issue
17, section 1): ConSPO with anything that breaks its exactness at ratio 1, and cepo's advantage estimators called
outside cepo's trainer (where they would be plain GRPO under another method's name)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import get_adv_estimator_fn

from cepo.integrations.verl.estimators import cepo_trainer_advantage
from cepo.recipes import ConfigError, compose_method_config


@pytest.mark.parametrize(
    ("override", "key", "fix"),
    [
        ("algorithm.rollout_correction.rollout_is=token", "algorithm.rollout_correction", "rollout_is=null"),
        ("algorithm.rollout_correction.rollout_rs=seq_mean_k1", "algorithm.rollout_correction", "rollout_rs=null"),
        ("algorithm.rollout_correction.bypass_mode=true", "algorithm.rollout_correction", "bypass_mode=false"),
        ("actor_rollout_ref.actor.use_kl_loss=true", "actor_rollout_ref.actor.use_kl_loss", "set it to false"),
        ("actor_rollout_ref.actor.entropy_coeff=0.01", "actor_rollout_ref.actor.entropy_coeff", "set it to 0"),
    ],
)
def test_conspo_refuses_what_breaks_ratio_one(override: str, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_method_config("conspo", [override])
    message = str(info.value)
    assert "\n" not in message and message.startswith(key) and fix in message
    compose_method_config("grpo", [override])  # GRPO has an importance ratio: these are its to use


@pytest.mark.parametrize("override", ["cepo.lam0=0", "cepo.warmup_steps=0"])
def test_lambda_always_zero_refused_on_verl(override: str) -> None:
    with pytest.raises(ConfigError, match=r"plain GRPO.*cepo\.method=grpo"):
        compose_method_config("cepo", [override])
    compose_method_config("cepo", [override.replace("=0", "=3") if "warmup" in override else "cepo.lam0=0.1"])


@pytest.mark.parametrize("method", ["rlsd", "cepo", "opsd", "sdpo", "conspo"])
def test_estimators_raise_outside_cepo_trainer(method: str) -> None:
    """verl resolves the estimator by name and calls it (core_algos.get_adv_estimator_fn, as compute_advantage
    does): outside cepo's trainer it raises naming the trainer mode, inside it gives Eq. 1."""
    fn = get_adv_estimator_fn(method)
    rewards = torch.zeros(4, 3)
    rewards[:, -1] = torch.tensor([1.0, 0.0, 1.0, 1.0])
    mask = torch.ones(4, 3)
    index = np.array(["a"] * 4, dtype=object)
    config = AlgoConfig(adv_estimator=method)
    with pytest.raises(RuntimeError, match=rf"adv_estimator={method} .*trainer\.v1\.trainer_mode=cepo_sync"):
        fn(token_level_rewards=rewards, response_mask=mask, index=index, config=config)
    with cepo_trainer_advantage():
        adv, _ = fn(token_level_rewards=rewards, response_mask=mask, index=index, config=config)
    scores = np.array([1.0, 0.0, 1.0, 1.0])
    expected = (scores - scores.mean()) / (scores.std(ddof=1) + 1e-6)  # Eq. 1, unbiased std as verl's torch.std
    np.testing.assert_allclose(adv[:, 0].double().numpy(), expected, rtol=1e-5)
    with pytest.raises(RuntimeError):  # the context ends with the block
        fn(token_level_rewards=rewards, response_mask=mask, index=index, config=config)
