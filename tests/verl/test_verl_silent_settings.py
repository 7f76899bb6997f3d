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


def test_conspo_kl_in_reward_message_does_not_suggest_the_refused_kl_loss() -> None:
    with pytest.raises(ConfigError, match="use_kl_in_reward") as info:
        compose_method_config("conspo", ["algorithm.use_kl_in_reward=true"])
    assert "use_kl_loss=true" not in str(info.value) and "set it to false" in str(info.value)


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


WORKER_PROBE = """
import sys

import verl  # a fresh process, as a Ray worker: verl loads (or, here, skips) the verl.plugins entry points
import verl.workers.engine_workers as engine_workers  # the worker class's module, imported before init_model
from verl.workers.config.model import HFModelConfig

before = engine_workers.maybe_fix_3d_position_ids.__module__
# what ActorRolloutRefWorker.init_model does first: build the model config, importing its external_lib
HFModelConfig(path=sys.argv[1], external_lib=sys.argv[2].split(",") if sys.argv[2] else None)
import verl.workers.engine.base as engine_base

print(before)
print([f.__module__ for f in (engine_base.maybe_fix_3d_position_ids, engine_workers.maybe_fix_3d_position_ids)])
"""


def _worker(tiny_vl_dir, tmp_path, external_lib, policy):
    import os
    import subprocess
    import sys

    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": policy, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", WORKER_PROBE, str(tiny_vl_dir), ",".join(external_lib)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-2:]


def test_every_worker_gets_the_position_ids_fix_through_external_lib(tiny_vl_dir, tmp_path):
    """With verl's plugin loading off (VERL_USE_EXTERNAL_PLUGINS=none) a worker runs verl's unfixed function; the
    external_lib that cepo's configs set installs the fix when the worker builds its model config."""
    from cepo.integrations.verl.plugin import PLUGIN_MODULE
    from cepo.recipes import PLUGIN_MODULE as CONFIGURED

    assert PLUGIN_MODULE == CONFIGURED
    cfg = compose_method_config("cepo", [])
    libs = cfg.actor_rollout_ref.model.external_lib
    assert libs == PLUGIN_MODULE
    kept = compose_method_config("grpo", ["actor_rollout_ref.model.external_lib=json"]).actor_rollout_ref.model
    assert list(kept.external_lib) == ["json", PLUGIN_MODULE]
    before, after = _worker(tiny_vl_dir, tmp_path, [libs], "none")
    assert before == "verl.utils.tensordict_utils"  # no plugin: verl's own, unfixed function
    assert after == str([PLUGIN_MODULE] * 2)


def test_driver_refuses_mrope_model_whose_workers_would_lack_the_fix(tiny_vl_dir, tmp_path, monkeypatch):
    from transformers import LlamaConfig

    from cepo.integrations.verl.plugin import PLUGIN_MODULE, require_workers_fix, uses_mrope

    text_model = tmp_path / "llama"
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                vocab_size=64).save_pretrained(text_model)
    assert uses_mrope(str(tiny_vl_dir)) and not uses_mrope(str(text_model))
    for policy, cause in (("none", "VERL_USE_EXTERNAL_PLUGINS=none excludes"),
                          ("someone_else", "VERL_USE_EXTERNAL_PLUGINS=someone_else excludes")):
        monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", policy)
        with pytest.raises(RuntimeError, match=rf"uses M-RoPE.*{cause}.*external_lib={PLUGIN_MODULE}") as info:
            require_workers_fix(str(tiny_vl_dir), None)
        assert "\n" not in str(info.value)
        require_workers_fix(str(tiny_vl_dir), [PLUGIN_MODULE])  # every worker imports it: fine
        require_workers_fix(str(text_model), None)  # no M-RoPE: no fix needed
    monkeypatch.setenv("VERL_USE_EXTERNAL_PLUGINS", "cepo")
    require_workers_fix(str(tiny_vl_dir), None)  # the entry point loads in every worker (pip-installed)


def test_entry_point_cause_names_a_missing_entry_point(monkeypatch):
    import importlib.metadata

    from cepo.integrations.verl import plugin

    monkeypatch.delenv("VERL_USE_EXTERNAL_PLUGINS", raising=False)
    assert plugin.entry_point_cause() is None
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [])  # a checkout that was not pip-installed
    assert "pip install -e ." in plugin.entry_point_cause()
    broken = importlib.metadata.EntryPoint(name="cepo", value="cepo_no_such_module", group="verl.plugins")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [broken])
    assert plugin.entry_point_cause().startswith("cepo's verl plugin fails to load (ModuleNotFoundError")
