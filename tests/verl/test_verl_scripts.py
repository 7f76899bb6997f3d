"""The launch scripts compose the intended config (Hydra's --cfg job stops before Ray), and the LoRA merge."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.parametrize(("script", "method", "model"), [
    ("train_cepo_qwen3vl_2b.sh", "cepo", "Qwen/Qwen3-VL-2B-Instruct"),
    ("train_cepo_qwen3vl_4b.sh", "cepo", "Qwen/Qwen3-VL-4B-Instruct"),
    ("train_grpo_qwen3vl_2b.sh", "grpo", "Qwen/Qwen3-VL-2B-Instruct"),
    ("train_rlsd_qwen3vl_2b.sh", "rlsd", "Qwen/Qwen3-VL-2B-Instruct"),
    ("train_opsd_qwen3vl_2b.sh", "opsd", "Qwen/Qwen3-VL-2B-Instruct"),
    ("train_sdpo_qwen3vl_2b.sh", "sdpo", "Qwen/Qwen3-VL-2B-Instruct"),
    ("train_conspo_qwen3vl_2b.sh", "conspo", "Qwen/Qwen3-VL-2B-Instruct"),
])
def test_train_script_composes(tmp_path, script, method, model):
    (tmp_path / "train.parquet").touch()
    env = {**os.environ, "NGPUS": "4", "DATA_DIR": str(tmp_path), "PYTHON": sys.executable}
    env.pop("MODEL_PATH", None)
    out = subprocess.run(["bash", str(SCRIPTS / script), "cepo.warmup_steps=10", "--cfg", "job"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.algorithm.adv_estimator == method and cfg.actor_rollout_ref.model.path == model
    assert cfg.trainer.n_gpus_per_node == 4 and cfg.data.train_files == f"{tmp_path}/train.parquet"
    assert cfg.cepo.warmup_steps == 10


def test_train_script_without_data_explains(tmp_path):
    env = {**os.environ, "DATA_DIR": str(tmp_path / "nope"), "PYTHON": sys.executable}
    out = subprocess.run(["bash", str(SCRIPTS / "train_cepo_qwen3vl_2b.sh")], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 2 and "prepare_geo3k.py" in out.stderr


def test_merge_lora_roundtrip(tmp_path):
    from peft import LoraConfig, get_peft_model

    from cepo.testing import build_qwen_tokenizer, save_tiny_text_lm

    base = save_tiny_text_lm(tmp_path / "base")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([build_qwen_tokenizer()("find x")["input_ids"]])
    with torch.no_grad():
        expected = peft_model(ids).logits
    out = subprocess.run([sys.executable, str(SCRIPTS / "merge_lora.py"), "--base", str(base), "--adapter",
                          str(tmp_path / "adapter"), "--out", str(tmp_path / "merged"), "--dtype", "float32"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-4, atol=1e-4)
