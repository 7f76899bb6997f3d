"""Offline test fixtures: a tiny Qwen-style tokenizer, tiny Qwen3-VL / Qwen3 / LLaVA-NeXT / Gemma-3 models, and
Geo3k-like data.

Nothing here touches the network or the Hugging Face hub; everything is built locally and deterministically::

    from cepo.testing import build_qwen_tokenizer, build_tiny_processor, build_tiny_qwen3vl, make_geo3k_like

    tokenizer = build_qwen_tokenizer()
    processor = build_tiny_processor(tokenizer)
    model = build_tiny_qwen3vl(tokenizer)
    dataset = make_geo3k_like(n=8)

Importing this package imports ``transformers``, ``torch`` and ``datasets``.
"""

from cepo.testing.geo3k import (
    GEO3K_FEATURES,
    GEO3K_KINDS,
    Geo3kProblem,
    make_geo3k_like,
    render_problem,
    sample_geo3k_problems,
    write_geo3k_parquet,
)
from cepo.testing.models import (
    build_tiny_processor,
    build_tiny_qwen3vl,
    build_tiny_text_lm,
    save_tiny_qwen3vl,
    save_tiny_text_lm,
    tiny_qwen3vl_config,
    tiny_text_lm_config,
)
from cepo.testing.other_vlms import (
    OTHER_VLM_FAMILIES,
    build_gemma3_tokenizer,
    build_llava_next_tokenizer,
    build_tiny_gemma3,
    build_tiny_gemma3_processor,
    build_tiny_llava_next,
    build_tiny_llava_next_processor,
    build_tiny_vlm,
)
from cepo.testing.tokenizer import CHAT_TEMPLATE, QWEN_SPECIAL_TOKENS, build_qwen_tokenizer

__all__ = [
    "CHAT_TEMPLATE",
    "GEO3K_FEATURES",
    "GEO3K_KINDS",
    "OTHER_VLM_FAMILIES",
    "QWEN_SPECIAL_TOKENS",
    "Geo3kProblem",
    "build_gemma3_tokenizer",
    "build_llava_next_tokenizer",
    "build_qwen_tokenizer",
    "build_tiny_gemma3",
    "build_tiny_gemma3_processor",
    "build_tiny_llava_next",
    "build_tiny_llava_next_processor",
    "build_tiny_processor",
    "build_tiny_qwen3vl",
    "build_tiny_text_lm",
    "build_tiny_vlm",
    "make_geo3k_like",
    "render_problem",
    "sample_geo3k_problems",
    "save_tiny_qwen3vl",
    "save_tiny_text_lm",
    "tiny_qwen3vl_config",
    "tiny_text_lm_config",
    "write_geo3k_parquet",
]
