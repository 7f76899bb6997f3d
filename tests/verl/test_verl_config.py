"""Method YAMLs compose with verl's real Hydra base config and are validated at start-up."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cepo.config import CEPOConfig
from cepo.integrations.verl.main import check_engine_config
from cepo.recipes import (
    CONFIGS_DIR,
    TRAINER_MODE,
    ConfigError,
    compose_method_config,
    configs_dir,
    reward_function_path,
)

METHODS = ("grpo", "rlsd", "cepo", "opsd", "sdpo", "conspo")


@pytest.fixture(scope="module")
def composed():
    return {m: compose_method_config(m, []) for m in METHODS}


def test_configs_dir_is_the_package_configs_and_repo_link():
    repo = Path(__file__).resolve().parents[2]
    assert configs_dir() == repo / "cepo" / "configs" == CONFIGS_DIR
    assert (repo / "configs").resolve() == configs_dir()  # the top-level configs/ users edit is the same folder
    for name in (*METHODS, "paper_base"):
        assert (configs_dir() / f"{name}.yaml").is_file()


def test_configs_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "cepo.yaml").write_text("cepo: {}\n")
    monkeypatch.setenv("CEPO_CONFIGS_DIR", str(tmp_path))
    assert configs_dir() == tmp_path.resolve()


def test_configs_dir_env_is_used_or_fails(tmp_path, monkeypatch):
    """A set $CEPO_CONFIGS_DIR is never silently replaced by the package configs."""
    (tmp_path / "mine.yaml").write_text("cepo: {}\n")  # no cepo.yaml: still the folder used
    monkeypatch.setenv("CEPO_CONFIGS_DIR", str(tmp_path))
    assert configs_dir() == tmp_path.resolve()
    with pytest.raises(ConfigError, match=r"no cepo\.yaml in .*CEPO_CONFIGS_DIR.*the YAMLs there: mine"):
        compose_method_config("cepo", [])
    monkeypatch.setenv("CEPO_CONFIGS_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing is not a folder"):
        configs_dir()


@pytest.mark.parametrize("method", METHODS)
def test_method_composes_on_verl_base(composed, method):
    cfg = composed[method]
    # keys that only verl's base config defines are present: the base was composed
    assert cfg.actor_rollout_ref.actor.strategy in ("fsdp", "fsdp2")
    assert cfg.algorithm.adv_estimator == method == cfg.cepo.method
    assert cfg.trainer.use_v1 is True and cfg.trainer.v1.trainer_mode == TRAINER_MODE
    assert set(cfg.cepo.keys()) == {f.name for f in dataclasses.fields(CEPOConfig)}
    assert CEPOConfig.from_mapping(OmegaConf.to_container(cfg.cepo, resolve=True)).method == method
    assert cfg.reward.custom_reward_function.path == reward_function_path()
    assert Path(reward_function_path()).is_file()


def test_paper_shared_setup(composed):
    for method, cfg in composed.items():
        arr = cfg.actor_rollout_ref
        assert (arr.model.lora_rank, arr.model.lora_alpha) == (16, 32)
        assert arr.rollout.n == 8 and cfg.data.train_batch_size == 32
        assert cfg.data.max_response_length == 2048 and cfg.trainer.total_training_steps == 50
        assert arr.actor.optim.lr_scheduler_type == "cosine" and arr.actor.optim.lr_warmup_steps == 5
        assert arr.actor.optim.lr == {"cepo": 5e-6, "conspo": 2e-6}.get(method, 1e-6)  # CEPO's and ConSPO's papers
        # ConSPO (no importance ratio) and SDPO (its authors' layout): one optimizer step per rollout batch
        assert arr.actor.ppo_mini_batch_size == (32 if method in ("conspo", "sdpo") else 16)
        assert "Qwen3-VL" in arr.model.path
        assert (cfg.data.prompt_key, cfg.data.image_key) == ("prompt", "images")
    cepo = composed["cepo"].cepo
    assert (cepo.lam0, cepo.lambda_schedule, cepo.warmup_steps, cepo.eps_w) == (0.5, "linear", 25, 0.5)
    assert cepo.teacher_sees_image is True
    assert composed["cepo"].reward.custom_reward_function.reward_kwargs.accuracy_weight == 0.9


def test_overrides_apply():
    cfg = compose_method_config("cepo", ["cepo.lam0=0.3", "actor_rollout_ref.rollout.n=4", "data.train_batch_size=8",
                                         "actor_rollout_ref.actor.ppo_mini_batch_size=4"])
    assert cfg.cepo.lam0 == 0.3 and cfg.actor_rollout_ref.rollout.n == 4


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+cepo.lamda0=0.3", "cepo.lamda0"),
        ("cepo.eps_w=1.5", "cepo.eps_w"),
        ("cepo.lam0=-0.1", "cepo.lam0"),
        ("cepo.method=rlsd", "algorithm.adv_estimator"),
        ("algorithm.adv_estimator=gae", "algorithm.adv_estimator"),
        ("actor_rollout_ref.rollout.n=1", "actor_rollout_ref.rollout.n"),
        ("actor_rollout_ref.actor.ppo_mini_batch_size=5", "actor_rollout_ref.actor.ppo_mini_batch_size"),
        ("cepo.teacher_max_prompt_length=100", "cepo.teacher_max_prompt_length"),
        ("actor_rollout_ref.actor.optim.lr=0", "actor_rollout_ref.actor.optim.lr"),
        ("+cepo.reward.acc_weight=1", "cepo.reward.acc_weight"),
        ("cepo.lam0=", "cepo.lam0"),
        ("cepo.warmup_steps=2.5", "cepo.warmup_steps"),
        ("cepo.lam0=${nowhere}", "cepo.lam0"),
        ("algorithm.use_kl_in_reward=true", "algorithm.use_kl_in_reward"),
        ("actor_rollout_ref.rollout.multi_turn.enable=true", "actor_rollout_ref.rollout.multi_turn.enable"),
        ("actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent",
         "actor_rollout_ref.rollout.agent.default_agent_loop"),
    ],
)
def test_bad_values_fail_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("$", r"\$")) as info:
        compose_method_config("cepo", [override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("method", ["rlsd", "cepo"])
def test_teacher_pass_methods_refuse_kl_in_reward_and_multi_turn(method):
    with pytest.raises(ConfigError, match=r"use_kl_in_reward.*actor_rollout_ref\.actor\.use_kl_loss=true"):
        compose_method_config(method, ["algorithm.use_kl_in_reward=true"])
    with pytest.raises(ConfigError, match=r"multi_turn\.enable.*final output only for grpo"):
        compose_method_config(method, ["actor_rollout_ref.rollout.multi_turn.enable=true"])


def test_grpo_keeps_kl_in_reward_and_multi_turn():
    cfg = compose_method_config("grpo", ["algorithm.use_kl_in_reward=true",
                                         "actor_rollout_ref.rollout.multi_turn.enable=true"])
    assert cfg.algorithm.use_kl_in_reward is True


def test_misspelt_verl_key_fails():
    with pytest.raises(ConfigError, match=r"unknown key actor_rollout_ref\.rolout .*did you mean "
                                          r"actor_rollout_ref\.rollout\?.*\+actor_rollout_ref\.rolout\.n=8"):
        compose_method_config("cepo", ["actor_rollout_ref.rolout.n=8"])


def test_hydra_run_dir_is_inside_the_run_directory():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(configs_dir()), version_base=None):
        cfg = compose("cepo", overrides=["trainer.default_local_dir=/runs/x"], return_hydra_config=True)
    assert cfg.hydra.run.dir.startswith("/runs/x/hydra/") and cfg.hydra.sweep.dir.startswith("/runs/x/hydra/")


def test_legacy_trainer_and_plain_sync_rejected():
    with pytest.raises(ValueError, match=r"trainer\.use_v1"):
        check_engine_config(compose_method_config("cepo", ["trainer.use_v1=false"]))
    with pytest.raises(ValueError, match=r"trainer\.v1\.trainer_mode"):
        check_engine_config(compose_method_config("rlsd", ["trainer.v1.trainer_mode=sync"]))
    check_engine_config(compose_method_config("grpo", ["trainer.v1.trainer_mode=sync"]))


def test_verl_dataclasses_accept_the_config(tiny_vl_dir):
    from verl.utils.config import omega_conf_to_dataclass

    cfg = compose_method_config("cepo", [f"actor_rollout_ref.model.path={tiny_vl_dir}"])
    algo = omega_conf_to_dataclass(cfg.algorithm)
    assert algo.adv_estimator == "cepo"
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.optim.lr_scheduler_type == "cosine" and actor.optim.lr == 5e-6
    model = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    assert (model.lora_rank, model.lora_alpha) == (16, 32)
    assert model.processor is not None


def test_entry_point_hydra_cfg_job(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cepo.integrations.verl.main", "--config-name", "rlsd", "--cfg", "job",
         "cepo.lam0=0.25"],
        capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path,
    )
    assert list(tmp_path.iterdir()) == []
    cfg = OmegaConf.create(out.stdout)
    assert cfg.algorithm.adv_estimator == "rlsd" and cfg.cepo.lam0 == 0.25
    assert "ppo_mini_batch_size" in out.stdout


def test_entry_point_rejects_bad_value_at_startup(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "cepo.integrations.verl.main", "--config-name", "cepo", "cepo.eps_w=2"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.returncode == 2 and "cepo.eps_w" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0  # one line
    assert list(tmp_path.iterdir()) == []  # Hydra left no outputs/<date>/ in the working directory
