"""The text-only math recipe (configs/text/): each method composes and validates on both engines, equals its VLM
method YAML plus the text layer (configs/text/math_base.yaml), and the launch scripts compose it (--cfg job)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cepo.recipes import ConfigError, compose_method_config, configs_dir, validate_method_config

METHODS = ("grpo", "rlsd", "cepo", "opsd", "sdpo", "conspo")
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

TEXT_ONLY = {"sdpo": {"cepo.teacher_max_prompt_length": 1024 + 4096}}
"""Keys a text method YAML sets beyond its VLM method YAML + the text layer: SDPO's teacher prompt holds a whole
demonstration, so its limit is data.max_prompt_length + data.max_response_length of the text layer."""


def _layer() -> OmegaConf:
    """configs/text/math_base.yaml as written (its ``# @package _global_`` line is a comment to OmegaConf)."""
    return OmegaConf.load(configs_dir() / "text" / "math_base.yaml")


@functools.cache
def _composed(name: str):
    """``compose_method_config(name)`` (verl validation), once per module; callers copy before changing it."""
    return compose_method_config(name, [])


@pytest.mark.parametrize("method", METHODS)
def test_text_method_is_vlm_method_plus_text_layer_and_validates_on_both_engines(method):
    text = _composed(f"text/{method}")
    expected = OmegaConf.create(OmegaConf.to_container(_composed(method)))
    expected = OmegaConf.merge(expected, _layer())
    for key, value in TEXT_ONLY.get(method, {}).items():
        OmegaConf.update(expected, key, value)
    assert OmegaConf.to_container(text, resolve=True) == OmegaConf.to_container(expected, resolve=True)
    assert "text" not in text  # every layer lands at the top level, none under a `text:` key
    assert validate_method_config(text, engine="trl").method == method


def test_text_recipe_choices():
    for method in METHODS:
        cfg = _composed(f"text/{method}")
        arr = cfg.actor_rollout_ref
        # the paper's shared setup stays
        assert (arr.model.lora_rank, arr.model.lora_alpha, arr.rollout.n) == (16, 32, 8)
        assert (cfg.data.train_batch_size, cfg.trainer.total_training_steps) == (32, 50)
        assert arr.actor.optim.lr == {"cepo": 5e-6, "conspo": 2e-6}.get(method, 1e-6)
        # the text choices (math_base.yaml's header)
        assert arr.model.path == "Qwen/Qwen3-1.7B" and arr.model.exclude_modules is None
        assert cfg.data.apply_chat_template_kwargs == {"enable_thinking": False}
        assert cfg.data.max_response_length == 4096
        assert [Path(f).name for f in cfg.data.val_files] == ["math500.parquet", "aime2024.parquet", "aime2025.parquet"]
        assert cfg.cepo.teacher_max_prompt_length >= cfg.data.max_prompt_length
        assert cfg.trainer.experiment_name == f"{method}_math"


def test_trl_engine_composes_a_config_in_a_subfolder_with_its_chat_template_switch(tmp_path):
    from cepo.integrations.trl.from_config import compose, trl_args

    args = trl_args(compose(configs_dir() / "text" / "cepo.yaml"))
    assert args.chat_template_kwargs == {"enable_thinking": False} and args.cepo_method == "cepo"
    assert args.max_completion_length == 4096 and args.learning_rate == 5e-6
    assert trl_args(compose(configs_dir() / "cepo.yaml")).chat_template_kwargs is None  # VLM recipe: no switch
    outside = tmp_path / "cepo.yaml"
    outside.write_text((configs_dir() / "text" / "cepo.yaml").read_text())
    with pytest.raises(ValueError, match="is not in"):
        compose(outside)


def test_text_layer_alone_is_not_a_method():
    with pytest.raises(ConfigError):
        compose_method_config("text/math_base", [])


def test_verl_entry_point_config_name_in_a_subfolder():
    out = subprocess.run([sys.executable, "-m", "cepo.integrations.verl.main", "--config-name", "text/cepo",
                          "cepo.lam0=0.3", "--cfg", "job"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.algorithm.adv_estimator == "cepo" and cfg.cepo.lam0 == 0.3
    assert cfg.data.apply_chat_template_kwargs.enable_thinking is False


@pytest.mark.parametrize("method", [
    "cepo", *(pytest.param(m, marks=pytest.mark.slow) for m in METHODS if m != "cepo")])
def test_text_train_script_composes(tmp_path, method):
    data = tmp_path / "my data"  # a space: the validation list quotes its paths
    data.mkdir()
    (data / "train.parquet").touch()
    env = {**os.environ, "NGPUS": "4", "DATA_DIR": str(data), "PYTHON": sys.executable}
    env.pop("MODEL_PATH", None)
    out = subprocess.run(["bash", str(SCRIPTS / f"train_{method}_qwen3_math.sh"), "cepo.warmup_steps=10", "--cfg",
                          "job"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.algorithm.adv_estimator == method and cfg.actor_rollout_ref.model.path == "Qwen/Qwen3-1.7B"
    assert cfg.data.train_files == f"{data}/train.parquet" and cfg.trainer.n_gpus_per_node == 4
    assert list(cfg.data.val_files) == [f"{data}/{s}.parquet" for s in ("math500", "aime2024", "aime2025")]
    assert cfg.trainer.experiment_name == f"{method}_Qwen3-1.7B_math" and cfg.cepo.warmup_steps == 10


def test_text_train_script_without_data_names_prepare_math(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path / "nope"), "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(SCRIPTS / "train_cepo_qwen3_math.sh")], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 2 and "prepare_math.py" in out.stderr
