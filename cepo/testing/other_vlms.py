"""Tiny, randomly initialised non-Qwen VLMs (LLaVA-NeXT, Gemma-3, Idefics3) and their processors, built fully offline.

The Qwen3-VL fixture (:mod:`cepo.testing.models`) feeds the model ``pixel_values``, ``image_grid_thw`` and
``mm_token_type_ids``. Other families take other inputs, and TRL forwards those too:

* **LLaVA-NeXT** (``LlavaNextForConditionalGeneration`` + ``LlavaNextProcessor``): ``pixel_values`` of shape
  ``(images, 1 + tiles, 3, 32, 32)`` (the base image plus the "anyres" tiles) and ``image_sizes`` ``(images, 2)``,
  the original ``(height, width)`` from which the model unpads the tile features; the processor counts the
  ``<image>`` tokens from the same sizes, so a wrong or missing ``image_sizes`` breaks the forward.
* **Gemma-3** (``Gemma3ForConditionalGeneration`` + ``Gemma3Processor``): ``pixel_values`` ``(images, 3, 32, 32)``
  and ``token_type_ids`` ``(rows, tokens)``, 1 on the image soft tokens, which attend to each other
  bidirectionally; without ``token_type_ids`` the attention is causal and the log-probs change.
* **Idefics3** (SmolVLM; ``Idefics3ForConditionalGeneration`` + ``Idefics3Processor``): ``pixel_values`` indexed by
  *row*, ``(rows, slots, 3, 32, 32)``, and ``pixel_attention_mask`` ``(rows, slots, 32, 32)``: an image is split into
  32x32 tiles plus a 32x32 global view, each a slot; a row with fewer slots than the batch's largest is padded with
  all-zero slots (mask 0), which the model drops. The processor's tiles are always full-size, so the mask is all ones
  on real slots and the model rebuilds the same mask when it is missing; a mask that hides pixels changes the forward.

All are built on the tokenizer of :func:`cepo.testing.build_qwen_tokenizer` with the family's image tokens added as
named special tokens (``tokenizer.image_token`` / ``tokenizer.image_token_id``, as the processors read them) and a
ChatML template (:func:`family_chat_template`) that renders an image item as the family's image placeholder.
Sizes: text decoder of 2 layers, hidden 64 (:data:`~cepo.testing.models.TINY_TEXT_KWARGS`), vision tower of
2 layers, hidden 32, 32x32 input with patch 8; about 0.3M parameters each, built in well under a second::

    from cepo.testing import build_tiny_vlm

    model, processor = build_tiny_vlm("llava_next")

Weights depend only on ``seed`` (the global torch RNG is left untouched); the generation config stops on
``<|im_end|>`` / ``<|endoftext|>`` like the Qwen fixtures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
)
from transformers.image_utils import PILImageResampling

from cepo.testing.models import TINY_TEXT_KWARGS, _token_id, seeded_model
from cepo.testing.tokenizer import (
    CHAT_TEMPLATE,
    ENDOFTEXT,
    build_qwen_tokenizer,
    wrap_backend,
)

__all__ = [
    "GEMMA3_BOI",
    "GEMMA3_EOI",
    "GEMMA3_IMAGE_SEQ_LENGTH",
    "GEMMA3_IMAGE_TOKEN",
    "IDEFICS3_FAKE_IMAGE_TOKEN",
    "IDEFICS3_GLOBAL_IMAGE_TOKEN",
    "IDEFICS3_IMAGE_SEQ_LENGTH",
    "IDEFICS3_IMAGE_TOKEN",
    "LLAVA_NEXT_GRID_PINPOINTS",
    "LLAVA_NEXT_IMAGE_TOKEN",
    "OTHER_VLM_FAMILIES",
    "build_family_tokenizer",
    "build_gemma3_tokenizer",
    "build_idefics3_tokenizer",
    "build_llava_next_tokenizer",
    "build_tiny_gemma3",
    "build_tiny_gemma3_processor",
    "build_tiny_idefics3",
    "build_tiny_idefics3_processor",
    "build_tiny_llava_next",
    "build_tiny_llava_next_processor",
    "build_tiny_vlm",
    "family_chat_template",
    "tiny_gemma3_config",
    "tiny_idefics3_config",
    "tiny_llava_next_config",
]

_QWEN_IMAGE_MARKUP = "'<|vision_start|><|image_pad|><|vision_end|>'"

LLAVA_NEXT_IMAGE_TOKEN = "<image>"
#: Resolutions (height, width) the LLaVA-NeXT image processor tiles an image to (multiples of the 32x32 base size):
#: a 32x64 image gets 2 tiles, most others 4 (64x64), and the model unpads the tile features of an image whose aspect
#: ratio differs from its tiling's with ``image_sizes``.
LLAVA_NEXT_GRID_PINPOINTS: list[list[int]] = [[32, 64], [64, 32], [64, 64]]
_LLAVA_NEXT_IMAGE_SIZE = 32
_LLAVA_NEXT_PATCH_SIZE = 8

GEMMA3_BOI = "<start_of_image>"
GEMMA3_EOI = "<end_of_image>"
GEMMA3_IMAGE_TOKEN = "<image_soft_token>"
#: Soft tokens per Gemma-3 image: the 4x4 patch grid of a 32x32 image average-pooled to 2x2.
GEMMA3_IMAGE_SEQ_LENGTH = 4
_GEMMA3_IMAGE_SIZE = 32
_GEMMA3_PATCH_SIZE = 8

IDEFICS3_IMAGE_TOKEN = "<image>"
IDEFICS3_FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
IDEFICS3_GLOBAL_IMAGE_TOKEN = "<global-img>"
_IDEFICS3_END_OF_UTTERANCE = "<end_of_utterance>"  # the processor adds it to the tokenizer; registered up front
_IDEFICS3_TILE_SIZE = 32  # max_image_size: the side of every tile and of the global view
_IDEFICS3_MAX_SIZE = 64  # longest edge an image is first resized to: at most 2x2 tiles
_IDEFICS3_PATCH_SIZE = 8
_IDEFICS3_SCALE_FACTOR = 2
#: ``<image>`` tokens per tile / global view: the 4x4 patch grid of a 32x32 tile pixel-shuffled by 2 to 2x2.
IDEFICS3_IMAGE_SEQ_LENGTH = (_IDEFICS3_TILE_SIZE // _IDEFICS3_PATCH_SIZE) ** 2 // _IDEFICS3_SCALE_FACTOR**2

_TINY_VISION_TOWER: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_channels": 3,
}


def family_chat_template(image_markup: str) -> str:
    """The fixture's ChatML template (:data:`~cepo.testing.tokenizer.CHAT_TEMPLATE`) with image items rendered as
    ``image_markup`` (e.g. ``"<image>\\n"`` for LLaVA-NeXT, ``"<start_of_image>"`` for Gemma-3) instead of Qwen's
    ``<|vision_start|><|image_pad|><|vision_end|>``."""
    if "'" in image_markup:
        raise ValueError(f"image_markup must not contain a single quote: {image_markup!r}")
    if _QWEN_IMAGE_MARKUP not in CHAT_TEMPLATE:  # pragma: no cover - guards a change of CHAT_TEMPLATE
        raise RuntimeError("CHAT_TEMPLATE no longer renders images as Qwen's vision markup")
    return CHAT_TEMPLATE.replace(_QWEN_IMAGE_MARKUP, "'" + image_markup.replace("\n", "\\n") + "'")


def build_family_tokenizer(named_tokens: Mapping[str, str], image_markup: str) -> PreTrainedTokenizerFast:
    """The Qwen-style fixture tokenizer with a VLM family's special tokens and chat template.

    Args:
        named_tokens: named special tokens to add, e.g. ``{"image_token": "<image>"}``; each becomes one id and an
            attribute (``tokenizer.image_token``, ``tokenizer.image_token_id``), as family processors expect.
        image_markup: what an image item of a conversation renders as (see :func:`family_chat_template`).

    The Qwen special tokens stay (``eos = <|im_end|>``, ``pad = <|endoftext|>``); the new ones get the ids after them.
    """
    backend = build_qwen_tokenizer().backend_tokenizer  # a fresh backend: adding tokens leaves no other tokenizer
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in named_tokens.values()])
    return wrap_backend(backend, family_chat_template(image_markup), model_specific_special_tokens=dict(named_tokens))


# -- LLaVA-NeXT ---------------------------------------------------------------------------------------------------


def build_llava_next_tokenizer() -> PreTrainedTokenizerFast:
    """Fixture tokenizer with ``<image>`` (``tokenizer.image_token``); images render as ``<image>\\n``."""
    return build_family_tokenizer({"image_token": LLAVA_NEXT_IMAGE_TOKEN}, LLAVA_NEXT_IMAGE_TOKEN + "\n")


def tiny_llava_next_config(tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaNextConfig:
    """The :class:`~transformers.LlavaNextConfig` of :func:`build_tiny_llava_next`: a 2-layer CLIP vision tower on
    32x32 images with 8x8 patches (16 patches + CLS), a 2-layer Qwen2 decoder, ``vision_feature_select_strategy``
    ``"default"`` (CLS dropped) and the tiles of :data:`LLAVA_NEXT_GRID_PINPOINTS`."""
    tokenizer = build_llava_next_tokenizer() if tokenizer is None else tokenizer
    text = {k: v for k, v in TINY_TEXT_KWARGS.items() if k not in ("head_dim", "attention_bias")}
    return LlavaNextConfig(
        vision_config={
            "model_type": "clip_vision_model",
            **_TINY_VISION_TOWER,
            "image_size": _LLAVA_NEXT_IMAGE_SIZE,
            "patch_size": _LLAVA_NEXT_PATCH_SIZE,
            "projection_dim": 32,
        },
        text_config={
            "model_type": "qwen2",
            **text,
            "vocab_size": len(tokenizer),
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        },
        image_token_index=_token_id(tokenizer, LLAVA_NEXT_IMAGE_TOKEN),
        image_grid_pinpoints=[list(p) for p in LLAVA_NEXT_GRID_PINPOINTS],
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(_LLAVA_NEXT_IMAGE_SIZE // _LLAVA_NEXT_PATCH_SIZE) ** 2,
        tie_word_embeddings=False,
    )


def build_tiny_llava_next(
    tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0
) -> LlavaNextForConditionalGeneration:
    """A randomly initialised, float32 :class:`~transformers.LlavaNextForConditionalGeneration` (about 0.3M
    parameters) for ``tokenizer`` (default: :func:`build_llava_next_tokenizer`); weights depend only on ``seed``."""
    tokenizer = build_llava_next_tokenizer() if tokenizer is None else tokenizer
    return seeded_model(LlavaNextForConditionalGeneration, tiny_llava_next_config(tokenizer), tokenizer, seed)


def build_tiny_llava_next_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> LlavaNextProcessor:
    """A :class:`~transformers.LlavaNextProcessor` matching :func:`build_tiny_llava_next`.

    Images are resized to the best of :data:`LLAVA_NEXT_GRID_PINPOINTS`, cut into 32x32 tiles and stacked after a
    32x32 copy of the whole image; ``<image>`` expands to ``16 + unpadded tile features + one newline per feature
    row`` tokens (88 for a 64x64 image, 52 for a 64-wide, 32-high one). Returns ``input_ids``, ``attention_mask``,
    ``pixel_values`` (tiles padded to the batch's largest count) and ``image_sizes``.
    """
    tokenizer = build_llava_next_tokenizer() if tokenizer is None else tokenizer
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": _LLAVA_NEXT_IMAGE_SIZE},
        crop_size={"height": _LLAVA_NEXT_IMAGE_SIZE, "width": _LLAVA_NEXT_IMAGE_SIZE},
        image_grid_pinpoints=[list(p) for p in LLAVA_NEXT_GRID_PINPOINTS],
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_LLAVA_NEXT_PATCH_SIZE,
        vision_feature_select_strategy="default",
        chat_template=tokenizer.chat_template,
        image_token=LLAVA_NEXT_IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS
    )


# -- Gemma-3 ------------------------------------------------------------------------------------------------------


def build_gemma3_tokenizer() -> PreTrainedTokenizerFast:
    """Fixture tokenizer with Gemma-3's ``<start_of_image>`` / ``<end_of_image>`` / ``<image_soft_token>``
    (``boi_token``, ``eoi_token``, ``image_token``); images render as ``<start_of_image>``, which the processor
    expands to ``\\n\\n<start_of_image>`` + 4 soft tokens + ``<end_of_image>\\n\\n``."""
    named = {"image_token": GEMMA3_IMAGE_TOKEN, "boi_token": GEMMA3_BOI, "eoi_token": GEMMA3_EOI}
    return build_family_tokenizer(named, GEMMA3_BOI)


def tiny_gemma3_config(tokenizer: PreTrainedTokenizerFast | None = None) -> Gemma3Config:
    """The :class:`~transformers.Gemma3Config` of :func:`build_tiny_gemma3`: a 2-layer SigLIP tower on 32x32 images
    with 8x8 patches pooled to :data:`GEMMA3_IMAGE_SEQ_LENGTH` soft tokens, and a 2-layer Gemma-3 decoder (one
    sliding-window layer, one global layer)."""
    tokenizer = build_gemma3_tokenizer() if tokenizer is None else tokenizer
    text = {k: v for k, v in TINY_TEXT_KWARGS.items() if k != "hidden_act"}
    rope = {"rope_type": "default", "rope_theta": 10_000.0}
    return Gemma3Config(
        vision_config={
            "model_type": "siglip_vision_model",
            **_TINY_VISION_TOWER,
            "image_size": _GEMMA3_IMAGE_SIZE,
            "patch_size": _GEMMA3_PATCH_SIZE,
        },
        text_config={
            "model_type": "gemma3_text",
            **text,
            "vocab_size": len(tokenizer),
            "sliding_window": 64,
            "layer_types": ["sliding_attention", "full_attention"],
            "rope_parameters": {"sliding_attention": dict(rope), "full_attention": dict(rope)},
        },
        mm_tokens_per_image=GEMMA3_IMAGE_SEQ_LENGTH,
        image_token_index=_token_id(tokenizer, GEMMA3_IMAGE_TOKEN),
        boi_token_index=_token_id(tokenizer, GEMMA3_BOI),
        eoi_token_index=_token_id(tokenizer, GEMMA3_EOI),
        tie_word_embeddings=False,
    )


def build_tiny_gemma3(
    tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0
) -> Gemma3ForConditionalGeneration:
    """A randomly initialised, float32 :class:`~transformers.Gemma3ForConditionalGeneration` (about 0.3M
    parameters) for ``tokenizer`` (default: :func:`build_gemma3_tokenizer`); weights depend only on ``seed``."""
    tokenizer = build_gemma3_tokenizer() if tokenizer is None else tokenizer
    config = tiny_gemma3_config(tokenizer)
    model = seeded_model(Gemma3ForConditionalGeneration, config, tokenizer, seed)
    # Gemma-3 initialises its image projection to zeros (a checkpoint overwrites it): a random model would give every
    # image token a zero embedding and ignore the image. Draw it like the other weights.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        weight = model.model.multi_modal_projector.mm_input_projection_weight
        torch.nn.init.normal_(weight, std=config.initializer_range)
    return model


def build_tiny_gemma3_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Gemma3Processor:
    """A :class:`~transformers.Gemma3Processor` matching :func:`build_tiny_gemma3`: images resized to 32x32 (no
    pan-and-scan), returns ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``pixel_values``."""
    tokenizer = build_gemma3_tokenizer() if tokenizer is None else tokenizer
    image_processor = Gemma3ImageProcessor(
        size={"height": _GEMMA3_IMAGE_SIZE, "width": _GEMMA3_IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        image_seq_length=GEMMA3_IMAGE_SEQ_LENGTH,
    )


# -- Idefics3 (SmolVLM) -------------------------------------------------------------------------------------------


def build_idefics3_tokenizer() -> PreTrainedTokenizerFast:
    """Fixture tokenizer with Idefics3's ``<image>``, ``<fake_token_around_image>``, ``<global-img>`` and
    ``<end_of_utterance>`` (``image_token``, ``fake_image_token``, ``global_image_token``, ``end_of_utterance_token``);
    images render as ``<image>``, which the processor expands per tile and for the global view (the ``<row_i_col_j>``
    tile tags stay plain text)."""
    named = {
        "image_token": IDEFICS3_IMAGE_TOKEN,
        "fake_image_token": IDEFICS3_FAKE_IMAGE_TOKEN,
        "global_image_token": IDEFICS3_GLOBAL_IMAGE_TOKEN,
        "end_of_utterance_token": _IDEFICS3_END_OF_UTTERANCE,
    }
    return build_family_tokenizer(named, IDEFICS3_IMAGE_TOKEN)


def tiny_idefics3_config(tokenizer: PreTrainedTokenizerFast | None = None) -> Idefics3Config:
    """The :class:`~transformers.Idefics3Config` of :func:`build_tiny_idefics3`: a 2-layer Idefics3 (SigLIP-style)
    vision tower on 32x32 tiles with 8x8 patches, pixel-shuffled by 2 to :data:`IDEFICS3_IMAGE_SEQ_LENGTH` tokens,
    and a 2-layer Llama decoder (as SmolVLM)."""
    tokenizer = build_idefics3_tokenizer() if tokenizer is None else tokenizer
    return Idefics3Config(
        vision_config={
            **_TINY_VISION_TOWER,
            "image_size": _IDEFICS3_TILE_SIZE,
            "patch_size": _IDEFICS3_PATCH_SIZE,
        },
        text_config={
            "model_type": "llama",
            **TINY_TEXT_KWARGS,
            "vocab_size": len(tokenizer),
            "pad_token_id": _token_id(tokenizer, ENDOFTEXT),
            "rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0},
        },
        image_token_id=_token_id(tokenizer, IDEFICS3_IMAGE_TOKEN),
        scale_factor=_IDEFICS3_SCALE_FACTOR,
        pad_token_id=_token_id(tokenizer, ENDOFTEXT),
        tie_word_embeddings=False,
    )


def build_tiny_idefics3(
    tokenizer: PreTrainedTokenizerFast | None = None, seed: int = 0
) -> Idefics3ForConditionalGeneration:
    """A randomly initialised, float32 :class:`~transformers.Idefics3ForConditionalGeneration` (about 0.3M
    parameters) for ``tokenizer`` (default: :func:`build_idefics3_tokenizer`); weights depend only on ``seed``."""
    tokenizer = build_idefics3_tokenizer() if tokenizer is None else tokenizer
    return seeded_model(Idefics3ForConditionalGeneration, tiny_idefics3_config(tokenizer), tokenizer, seed)


def build_tiny_idefics3_processor(tokenizer: PreTrainedTokenizerFast | None = None) -> Idefics3Processor:
    """An :class:`~transformers.Idefics3Processor` matching :func:`build_tiny_idefics3`.

    Images are resized to a longest edge of 64, rounded up to multiples of 32 and split into 32x32 tiles, followed by
    a 32x32 global view (a 64x64 image: 4 tiles + 1 = 5 slots; 64 wide and 32 high: 2 + 1 = 3). ``<image>`` expands
    to ``<fake_token_around_image><row_i_col_j>`` + 4 ``<image>`` per tile, a newline per tile row, then
    ``\\n<fake_token_around_image><global-img>`` + 4 ``<image>`` + ``<fake_token_around_image>``. Returns
    ``input_ids``, ``attention_mask``, ``pixel_values`` (rows, slots, 3, 32, 32) and ``pixel_attention_mask``
    (rows, slots, 32, 32), slots padded to the batch's largest count.
    """
    tokenizer = build_idefics3_tokenizer() if tokenizer is None else tokenizer
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": _IDEFICS3_MAX_SIZE},
        max_image_size={"longest_edge": _IDEFICS3_TILE_SIZE},
        do_image_splitting=True,
        resample=PILImageResampling.BICUBIC,  # what the torchvision backend uses anyway (it has no LANCZOS)
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LENGTH,
        chat_template=tokenizer.chat_template,
    )


#: Family name -> (tokenizer builder, model builder, processor builder), the model input that family adds, and
#: whether the forward changes without it (Idefics3's mask only matters for images padded within a slot, which its
#: processor never makes; one that hides pixels changes the forward).
OTHER_VLM_FAMILIES: dict[str, dict[str, Any]] = {
    "llava_next": {
        "tokenizer": build_llava_next_tokenizer,
        "model": build_tiny_llava_next,
        "processor": build_tiny_llava_next_processor,
        "family_key": "image_sizes",
        "family_key_required": True,
    },
    "gemma3": {
        "tokenizer": build_gemma3_tokenizer,
        "model": build_tiny_gemma3,
        "processor": build_tiny_gemma3_processor,
        "family_key": "token_type_ids",
        "family_key_required": True,
    },
    "idefics3": {
        "tokenizer": build_idefics3_tokenizer,
        "model": build_tiny_idefics3,
        "processor": build_tiny_idefics3_processor,
        "family_key": "pixel_attention_mask",
        "family_key_required": False,  # full-size tiles: the model rebuilds the same all-ones mask without it
    },
}


def build_tiny_vlm(family: str, seed: int = 0) -> tuple[torch.nn.Module, ProcessorMixin]:
    """A tiny model of ``family`` (a key of :data:`OTHER_VLM_FAMILIES`) and its processor, on one shared tokenizer.

    The model is returned as built (training mode); call ``.eval()`` as needed."""
    if family not in OTHER_VLM_FAMILIES:
        raise ValueError(f"unknown VLM family {family!r}; choose from {sorted(OTHER_VLM_FAMILIES)}")
    builders = OTHER_VLM_FAMILIES[family]
    tokenizer = builders["tokenizer"]()
    return builders["model"](tokenizer, seed=seed), builders["processor"](tokenizer)
