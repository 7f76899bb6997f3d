"""The paper config's actor attention: it loads without flash-attn, and it is exact on verl's packed input.

verl 0.9.1 builds the actor from ``actor_rollout_ref.model.override_config.attn_implementation`` and defaults to
``flash_attention_2`` (``verl/workers/config/model.py``), which raises ImportError where the optional ``flash-attn``
package is absent. ``paper_base.yaml`` selects ``sdpa``. With ``use_remove_padding=true`` (the paper config) verl
packs a micro-batch into one row (``input_ids`` (1, nnz), M-RoPE ``position_ids`` (4, 1, nnz) whose row 0 restarts
at 0 per sequence, no attention mask, ``use_cache=False``); transformers then derives a block-diagonal mask from
row 0, so sequences do not attend to each other. verl's Qwen3-VL patch replaces only the image-embedding merge,
not the mask. CPU only: loads the tiny Qwen3-VL the way ``FSDPEngine._build_module`` does (without FSDP).
"""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("verl")

from cepo.recipes import compose_method_config


def _actor(tiny_vl_dir):
    """The actor module built from the composed paper config, as verl's FSDP engine builds it."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.model import get_hf_auto_model_class

    cfg = compose_method_config("cepo", [f"actor_rollout_ref.model.path={tiny_vl_dir}"])
    assert cfg.actor_rollout_ref.model.use_remove_padding  # the packed forward checked below
    model_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)
    auto_class = get_hf_auto_model_class(hf_config=model_cfg.hf_config)
    module = auto_class.from_pretrained(model_cfg.local_path, config=model_cfg.hf_config, torch_dtype=torch.float32)
    return module.eval()


def test_paper_config_actor_loads_without_flash_attn(tiny_vl_dir):
    module = _actor(tiny_vl_dir)
    assert module.config._attn_implementation == "sdpa"


def test_packed_forward_equals_one_forward_per_sequence(tiny_vl_dir, vl_processor, geo_rows):
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    module = _actor(tiny_vl_dir)
    agent = types.SimpleNamespace(processor=vl_processor)
    messages, images, _ = geo_rows
    seqs = []
    for i, response in ((0, "So the answer is \\boxed{3}."), (1, "x = 12")):
        text = vl_processor.apply_chat_template(messages[i], add_generation_prompt=True, tokenize=False) + response
        inputs = vl_processor(text=[text], images=images[i], return_tensors="pt")
        ids = inputs["input_ids"]
        # verl's agent loop: (1, 4, L) = text positions + 3 M-RoPE rows; its engine packs them as (4, 1, nnz)
        positions = AgentLoopWorker._compute_position_ids(agent, ids, torch.ones_like(ids), dict(inputs))
        seqs.append((ids, positions.transpose(0, 1), inputs["pixel_values"], inputs["image_grid_thw"]))

    with torch.no_grad():
        alone = [module(input_ids=ids, position_ids=pos, pixel_values=pix, image_grid_thw=thw,
                        use_cache=False).logits[0] for ids, pos, pix, thw in seqs]
        packed = module(input_ids=torch.cat([s[0] for s in seqs], 1), position_ids=torch.cat([s[1] for s in seqs], -1),
                        pixel_values=torch.cat([s[2] for s in seqs]), image_grid_thw=torch.cat([s[3] for s in seqs]),
                        use_cache=False).logits[0]
    first = seqs[0][0].shape[1]
    torch.testing.assert_close(packed[:first], alone[0], atol=1e-4, rtol=1e-4)
    # the second sequence would see the first one's tokens if the packing were not honoured
    torch.testing.assert_close(packed[first:], alone[1], atol=1e-4, rtol=1e-4)
