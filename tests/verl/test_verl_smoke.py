"""``cepo smoke --engine verl`` on CPU: the refusal without CUDA/vLLM, and everything the GPU run will use, checked
here so that a GPU user does not find a config or data error: the vLLM-ready tiny Qwen3-VL (its dimensions and a
forward pass), the parquet through verl's own ``RLHFDataset`` with the composed config, the exact overrides
composed for every method and through verl's ``validate_config``, and the exact command with ``--cfg job``.
"""

from __future__ import annotations

import math
import subprocess
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cepo import cli
from cepo.algorithms import METHODS
from cepo.integrations.verl.resources import check_parallelism, required_pools
from cepo.integrations.verl.smoke import (
    SMOKE_STEPS,
    entry_point_command,
    save_vllm_tiny_qwen3vl,
    smoke_overrides,
    write_verl_geo3k,
)
from cepo.recipes import compose_method_config

NO_GPU_STACK = not torch.cuda.is_available() or find_spec("vllm") is None


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("verl_smoke")
    return {"model": save_vllm_tiny_qwen3vl(root / "model"), "data": write_verl_geo3k(root / "data"),
            "run": root / "run"}


@pytest.mark.skipif(not NO_GPU_STACK, reason="this machine has CUDA and vLLM")
def test_refuses_without_cuda_or_vllm_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = cli.main(["smoke", "--engine", "verl", "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("cepo smoke: error: --engine verl needs "), err
    if not torch.cuda.is_available():
        assert "a CUDA GPU (torch " in err
    if find_spec("vllm") is None:
        assert "vLLM (not installed)" in err
    assert 'pip install -e ".[gpu,trl]"' in err and "cepo doctor" in err
    assert not out.exists()


def test_tiny_model_suits_vllm_kernels(inputs: dict[str, Path]) -> None:
    """head_dim 64 (FlashAttention / FlashInfer sizes) in the decoder and the ViT; M-RoPE sections sum to head_dim/2;
    the merger feeds the decoder's width; a square grid of position embeddings; a finite forward with an image."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from cepo.testing import make_geo3k_like

    config = AutoConfig.from_pretrained(inputs["model"])
    text, vision = config.text_config, config.vision_config
    assert text.head_dim == 64 and vision.hidden_size // vision.num_heads == 64
    assert text.num_attention_heads % text.num_key_value_heads == 0
    assert sum(text.rope_parameters["mrope_section"]) == text.head_dim // 2
    assert vision.out_hidden_size == text.hidden_size
    assert math.isqrt(vision.num_position_embeddings) ** 2 == vision.num_position_embeddings
    assert max(vision.deepstack_visual_indexes) < vision.depth
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(inputs["model"])
    eos = GenerationConfig.from_pretrained(inputs["model"]).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert text.vocab_size == len(tokenizer)

    model = AutoModelForImageTextToText.from_pretrained(inputs["model"]).eval()
    processor = AutoProcessor.from_pretrained(inputs["model"])
    row = make_geo3k_like(1)[0]
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["problem"]}]}]
    text_in = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text_in], images=[row["images"][0]], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], text.vocab_size) and torch.isfinite(logits).all()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_smoke_overrides_compose_for_one_gpu(inputs: dict[str, Path], method: str) -> None:
    """The exact overrides, composed with each method YAML, ask for 1 GPU and pass verl's own config checks."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from cepo.integrations.verl.main import check_engine_config

    cfg = compose_method_config(method, smoke_overrides(inputs["model"], inputs["data"], inputs["run"], method,
                                                        SMOKE_STEPS))
    check_engine_config(cfg)
    check_parallelism(cfg)
    assert sum(p.total for p in required_pools(cfg)) == 1
    assert cfg.actor_rollout_ref.rollout.name == "vllm" and cfg.actor_rollout_ref.rollout.gpu_memory_utilization <= 0.3
    assert cfg.trainer.total_training_steps == SMOKE_STEPS and cfg.trainer.save_freq == 1
    assert cfg.trainer.resume_mode == "auto" and cfg.trainer.default_local_dir == str(inputs["run"])
    try:
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    except ValueError as err:
        # the last check (vLLM's LoRA ranks) imports vLLM: every check before it has passed
        assert find_spec("vllm") is None and "vllm version None" in str(err), err


def test_smoke_data_passes_verls_dataset(inputs: dict[str, Path]) -> None:
    """verl's ``RLHFDataset`` with the composed ``data`` config keeps every row (no prompt over max_prompt_length)."""
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    cfg = compose_method_config("cepo", smoke_overrides(inputs["model"], inputs["data"], inputs["run"], "cepo",
                                                        SMOKE_STEPS))
    model = str(inputs["model"])
    dataset = RLHFDataset(data_files=[str(inputs["data"] / "train.parquet")], tokenizer=hf_tokenizer(model),
                          config=cfg.data, processor=hf_processor(model))
    assert len(dataset) == 8
    item = dataset[0]
    assert item["reward_model"]["ground_truth"] and item["raw_prompt"][0]["role"] == "user"


@pytest.mark.slow
def test_the_exact_command_composes_with_cfg_job(inputs: dict[str, Path], tmp_path: Path) -> None:
    """The command the smoke run executes, with ``--cfg job``: exit 0, the printed config has the overrides."""
    overrides = smoke_overrides(inputs["model"], inputs["data"], inputs["run"], "cepo", SMOKE_STEPS)
    done = subprocess.run([*entry_point_command("cepo", overrides), "--cfg", "job"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = OmegaConf.create(done.stdout)
    assert cfg.trainer.n_gpus_per_node == 1 and cfg.actor_rollout_ref.model.path == str(inputs["model"])
    assert cfg.data.train_batch_size == 2 and cfg.data.max_response_length == 32
    assert list(tmp_path.iterdir()) == [] and not inputs["run"].exists()
