"""Tiny, randomly initialised Qwen3-VL / Qwen3 models and a matching processor, built fully offline.

Everything here is created from configs (no hub access) on top of :func:`cepo.testing.build_qwen_tokenizer`,
so the objects behave like ``Qwen/Qwen3-VL-*-Instruct`` checkpoints (same classes, same special tokens, same
multimodal RoPE / DeepStack code paths) while having well under a million parameters.

Sizes (see :data:`TINY_TEXT_KWARGS` / :data:`TINY_VISION_KWARGS`):

* text: 2 layers, hidden 64, 4 query heads / 2 KV heads of dim 16, MLP 128, ``rope_theta`` 5e6, interleaved
  M-RoPE with ``mrope_section = [4, 2, 2]`` (sums to ``head_dim // 2 = 8``; the T/H/W split Qwen3-VL's
  ``[24, 20, 20]`` gives for ``head_dim`` 128, scaled down);
* vision: 2 blocks, hidden 32, 2 heads, MLP 64, ``patch_size`` 16, ``temporal_patch_size`` 2,
  ``spatial_merge_size`` 2, 256 (16x16) learned position embeddings, DeepStack taps after blocks 0 and 1,
  ``out_hidden_size`` 64 (= text hidden);
* processor: ``min_pixels = 32*32``, ``max_pixels = 128*128``, so a 64x64 image becomes a 4x4 patch grid
  (``image_grid_thw = [1, 4, 4]``) and 4 ``<|image_pad|>`` tokens, and no image gets more than 16.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLImageProcessor,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)

from cepo.testing.tokenizer import (
    CHAT_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_qwen_tokenizer,
)

__all__ = [
    "IMAGE_MAX_PIXELS",
    "IMAGE_MIN_PIXELS",
    "TINY_TEXT_KWARGS",
    "TINY_VISION_KWARGS",
    "build_tiny_processor",
    "build_tiny_qwen3vl",
    "build_tiny_text_lm",
    "save_tiny_qwen3vl",
    "save_tiny_text_lm",
    "seeded_model",
    "tiny_qwen3vl_config",
    "tiny_text_lm_config",
]

PATCH_SIZE = 16
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
#: Pixel budget of the tiny image processor; must be multiples of ``(PATCH_SIZE * MERGE_SIZE) ** 2``.
IMAGE_MIN_PIXELS = 32 * 32
IMAGE_MAX_PIXELS = 128 * 128

#: Text-decoder sizes shared by the tiny Qwen3-VL and the tiny text LM (``vocab_size`` is added per tokenizer).
TINY_TEXT_KWARGS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "hidden_act": "silu",
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-6,
    "initializer_range": 0.02,
    "attention_bias": False,
}

#: Vision-tower sizes of the tiny Qwen3-VL.
TINY_VISION_KWARGS: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "in_channels": 3,
    "patch_size": PATCH_SIZE,
    "spatial_merge_size": MERGE_SIZE,
    "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    "out_hidden_size": TINY_TEXT_KWARGS["hidden_size"],
    "num_position_embeddings": 256,
    "deepstack_visual_indexes": [0, 1],
    "hidden_act": "gelu_pytorch_tanh",
    "initializer_range": 0.02,
}

_MROPE_PARAMETERS: dict[str, Any] = {
    "rope_type": "default",
    "rope_theta": 5_000_000.0,
    "mrope_section": [4, 2, 2],
    "mrope_interleaved": True,
}


def _tokenizer_or_default(tokenizer: PreTrainedTokenizerFast | None) -> PreTrainedTokenizerFast:
    return build_qwen_tokenizer() if tokenizer is None else tokenizer


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(token_id, int) or tokenizer.convert_ids_to_tokens(token_id) != token:
        raise ValueError(f"tokenizer has no single-id token {token!r}")
    return token_id


def _set_generation_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast) -> None:
    """Qwen-style generation defaults: stop on ``<|im_end|>`` or ``<|endoftext|>``, pad with ``<|endoftext|>``."""
    eos_id = _token_id(tokenizer, IM_END)
    pad_id = _token_id(tokenizer, ENDOFTEXT)
    gen = model.generation_config
    gen.eos_token_id = [eos_id, pad_id]
    gen.pad_token_id = pad_id
    gen.bos_token_id = pad_id
    gen.do_sample = False


def seeded_model(
    model_cls: Any,
    config: Any,
    tokenizer: PreTrainedTokenizerFast,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """``model_cls(config)`` initialised from ``seed`` on ``device`` (built there: a 2B model needs no CPU copy),
    cast to ``dtype``, with the Qwen generation ids of ``tokenizer``; the global RNGs are left untouched."""
    device = torch.device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), device:
        torch.manual_seed(seed)
        model = model_cls(config).to(dtype)
    _set_generation_ids(model, tokenizer)
    return model


def tiny_qwen3vl_config(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen3VLConfig:
    """Return the :class:`~transformers.Qwen3VLConfig` of :func:`build_tiny_qwen3vl` for ``tokenizer``."""
    tokenizer = _tokenizer_or_default(tokenizer)
    text_config = {
        **TINY_TEXT_KWARGS,
        "vocab_size": len(tokenizer),
        "rope_parameters": dict(_MROPE_PARAMETERS),
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=dict(TINY_VISION_KWARGS),
        image_token_id=_token_id(tokenizer, IMAGE_PAD),
        video_token_id=_token_id(tokenizer, VIDEO_PAD),
        vision_start_token_id=_token_id(tokenizer, VISION_START),
        vision_end_token_id=_token_id(tokenizer, VISION_END),
        tie_word_embeddings=False,
    )


def tiny_text_lm_config(tokenizer: PreTrainedTokenizerFast | None = None) -> Qwen3Config:
    """Return the :class:`~transformers.Qwen3Config` of :func:`build_tiny_text_lm` for ``tokenizer``."""
    tokenizer = _tokenizer_or_default(tokenizer)
    return Qwen3Config(
        **TINY_TEXT_KWARGS,
        vocab_size=len(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=False,
        bos_token_id=_token_id(tokenizer, ENDOFTEXT),
        eos_token_id=_token_id(tokenizer, IM_END),
        pad_token_id=None,
    )


def build_tiny_qwen3vl(
    tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0
) -> Qwen3VLForConditionalGeneration:
    """Build a randomly initialised, float32 :class:`~transformers.Qwen3VLForConditionalGeneration`.

    The vocabulary is ``len(tokenizer)`` and the image/video/vision-start/vision-end token ids are the
    tokenizer's.  The generation config stops on ``<|im_end|>`` / ``<|endoftext|>`` and pads with
    ``<|endoftext|>``.  Weights depend only on ``seed`` (the global torch RNG state is left untouched).
    The model is returned as built by ``transformers`` (in training mode); call ``.eval()`` as needed.

    Args:
        tokenizer: tokenizer the model is built for; defaults to :func:`build_qwen_tokenizer`.
        seed: seed of the weight initialisation.
    """
    tokenizer = _tokenizer_or_default(tokenizer)
    return seeded_model(Qwen3VLForConditionalGeneration, tiny_qwen3vl_config(tokenizer), tokenizer, seed)


def build_tiny_text_lm(tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0) -> Qwen3ForCausalLM:
    """Build a randomly initialised, float32, 2-layer :class:`~transformers.Qwen3ForCausalLM`.

    Same text sizes as :func:`build_tiny_qwen3vl` (plain 1-D RoPE), vocabulary ``len(tokenizer)``,
    ``eos = <|im_end|>``; deterministic for a given ``seed`` (global RNG untouched).

    Args:
        tokenizer: tokenizer the model is built for; defaults to :func:`build_qwen_tokenizer`.
        seed: seed of the weight initialisation.
    """
    tokenizer = _tokenizer_or_default(tokenizer)
    return seeded_model(Qwen3ForCausalLM, tiny_text_lm_config(tokenizer), tokenizer, seed)


def build_tiny_processor(
    tokenizer: PreTrainedTokenizerFast | None = None,
    min_pixels: int = IMAGE_MIN_PIXELS,
    max_pixels: int = IMAGE_MAX_PIXELS,
) -> Qwen3VLProcessor:
    """Build a :class:`~transformers.Qwen3VLProcessor` matching :func:`build_tiny_qwen3vl`.

    ``min_pixels`` / ``max_pixels`` set the image processor's pixel budget (Qwen3-VL-2B-Instruct's own is
    ``65536`` / ``16777216``: a 512x512 image becomes 256 image tokens); the defaults keep images tiny.

    Image processor: ``Qwen2VLImageProcessor`` (the torchvision backend ``AutoImageProcessor`` picks for
    ``qwen3_vl``) with patch 16 / merge 2 / temporal patch 2, mean = std = 0.5 like Qwen3-VL, and pixels in
    ``[IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS]`` (64x64 -> 4 image tokens).  Video processor:
    ``Qwen3VLVideoProcessor`` with the same patching, a tiny pixel budget and at most 8 sampled frames.
    The chat template is :data:`~cepo.testing.tokenizer.CHAT_TEMPLATE` (set on processor and tokenizer).

    The processor's ``__call__`` returns ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (0 text,
    1 image, 2 video; required by the model's forward whenever ``image_grid_thw``/``video_grid_thw`` is
    passed), ``pixel_values`` and ``image_grid_thw`` (and the video counterparts).

    Args:
        tokenizer: tokenizer to wrap (used as is, not copied); defaults to a new :func:`build_qwen_tokenizer`.
    """
    tokenizer = _tokenizer_or_default(tokenizer)
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    image_processor = Qwen2VLImageProcessor(
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        size={"shortest_edge": 2 * IMAGE_MIN_PIXELS, "longest_edge": 8 * IMAGE_MAX_PIXELS},
        min_frames=2,
        max_frames=8,
        fps=2,
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_qwen3vl(path: str | Path, tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0) -> Path:
    """Write a tiny Qwen3-VL checkpoint (model, generation config, processor, tokenizer) to ``path``.

    The directory loads back offline with ``AutoModelForImageTextToText``, ``AutoProcessor`` and
    ``AutoTokenizer`` ``.from_pretrained(path)`` and gives the same logits as the in-memory model.

    Returns:
        ``path`` as a :class:`~pathlib.Path` (created if missing).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = copy.deepcopy(_tokenizer_or_default(tokenizer))
    model = build_tiny_qwen3vl(tokenizer, seed=seed)
    processor = build_tiny_processor(tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_text_lm(path: str | Path, tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0) -> Path:
    """Write a tiny Qwen3 text LM checkpoint (model, generation config, tokenizer) to ``path``.

    Loads back offline with ``AutoModelForCausalLM`` / ``AutoTokenizer`` ``.from_pretrained(path)``.

    Returns:
        ``path`` as a :class:`~pathlib.Path` (created if missing).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer_or_default(tokenizer)
    model = build_tiny_text_lm(tokenizer, seed=seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
