"""Shared fixtures for the verl-engine tests: a tiny Qwen3-VL checkpoint loaded through verl's own helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Qwen3-VL (model, processor, tokenizer), loadable offline by path."""
    from cepo.testing import save_tiny_qwen3vl

    return save_tiny_qwen3vl(tmp_path_factory.mktemp("tiny_qwen3vl"))


@pytest.fixture(scope="session")
def vl_processor(tiny_vl_dir: Path):
    """verl's ``hf_processor`` on the tiny checkpoint: a Qwen3VLProcessor with ``get_rope_index`` bound."""
    from verl.utils.tokenizer import hf_processor

    processor = hf_processor(str(tiny_vl_dir))
    assert processor is not None and hasattr(processor, "get_rope_index")
    return processor


@pytest.fixture(scope="session")
def vl_model(tiny_vl_dir: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(tiny_vl_dir)).eval()


@pytest.fixture(scope="session")
def geo_rows():
    """Three Geo3k-like problems as verl ``raw_prompt`` conversations plus their images and answers."""
    from cepo.testing import make_geo3k_like

    ds = make_geo3k_like(3)
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": r["images"][0]},
                                      {"type": "text", "text": r["problem"].replace("<image>", "")}]}]
        for r in ds
    ]
    images = [[r["images"][0]] for r in ds]
    return messages, images, list(ds["answer"])
