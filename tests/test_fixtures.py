"""The offline fixtures in ``cepo.testing``: tokenizer, chat template, processor, tiny models, Geo3k-like data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cepo.testing import (
    CHAT_TEMPLATE,
    GEO3K_KINDS,
    QWEN_SPECIAL_TOKENS,
    build_qwen_tokenizer,
    build_tiny_processor,
    build_tiny_qwen3vl,
    build_tiny_text_lm,
    make_geo3k_like,
    sample_geo3k_problems,
    save_tiny_qwen3vl,
    save_tiny_text_lm,
    write_geo3k_parquet,
)

IMAGE_BLOCK = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def tokenizer():
    return build_qwen_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return build_tiny_processor(tokenizer)


@pytest.fixture(scope="module")
def vl_model(tokenizer):
    return build_tiny_qwen3vl(tokenizer).eval()


def _image_prompt(processor, question: str = "Find x.") -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _vl_inputs(processor, size: tuple[int, int] = (64, 64)):
    image = Image.new("RGB", size, "white")
    return processor(text=[_image_prompt(processor)], images=[image], return_tensors="pt")


# --------------------------------------------------------------------------------------------- tokenizer


def test_chat_template_text_conversation(tokenizer):
    messages = [
        {"role": "system", "content": "You are a careful tutor."},
        {"role": "user", "content": "Solve 2x = 6."},
        {"role": "assistant", "content": r"x = \boxed{3}"},
    ]
    expected = (
        "<|im_start|>system\nYou are a careful tutor.<|im_end|>\n"
        "<|im_start|>user\nSolve 2x = 6.<|im_end|>\n"
        "<|im_start|>assistant\nx = \\boxed{3}<|im_end|>\n"
    )
    assert tokenizer.chat_template == CHAT_TEMPLATE
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == expected.rsplit("<|im_start|>assistant", 1)[0] + "<|im_start|>assistant\n"


def test_chat_template_with_image(tokenizer, processor):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": Image.new("RGB", (8, 8))},
                {"type": "text", "text": "Find x."},
            ],
        }
    ]
    expected = f"<|im_start|>user\n{IMAGE_BLOCK}Find x.<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    messages[0]["content"][0] = {"type": "image"}
    assert processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected


def test_special_tokens_are_single_ids(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(tok) for tok in QWEN_SPECIAL_TOKENS]
    assert len(set(ids)) == len(QWEN_SPECIAL_TOKENS)
    for tok, tok_id in zip(QWEN_SPECIAL_TOKENS, ids, strict=True):
        assert tokenizer.encode(tok, add_special_tokens=False) == [tok_id]
        assert tokenizer.decode([tok_id]) == tok
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "right"
    assert 1000 <= len(tokenizer) <= 2000
    text = r"Therefore, the hypotenuse is \boxed{13} and \frac{1}{2}\sqrt{3}."
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_tokenizer_calls_are_independent():
    first, second = build_qwen_tokenizer(), build_qwen_tokenizer()
    first.padding_side = "left"
    assert second.padding_side == "right"
    assert first.get_vocab() == second.get_vocab()


# --------------------------------------------------------------------------------------------- processor


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (128, 128)])
def test_processor_expands_image_pad(processor, tokenizer, size):
    inputs = _vl_inputs(processor, size)
    grid = inputs["image_grid_thw"]
    merge = processor.image_processor.merge_size
    n_tokens = int(grid.prod()) // merge**2
    image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"] == image_id).sum()) == n_tokens
    assert inputs["pixel_values"].shape[0] == int(grid.prod())
    # mm_token_type_ids: 1 exactly on the image placeholders, 0 elsewhere
    assert torch.equal(inputs["mm_token_type_ids"], (inputs["input_ids"] == image_id).long())
    if size == (64, 64):
        assert grid.tolist() == [[1, 4, 4]] and n_tokens == 4


# --------------------------------------------------------------------------------------------- models


def test_qwen3vl_forward_and_generate(vl_model, processor, tokenizer):
    inputs = _vl_inputs(processor)
    assert set(inputs) >= {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"}
    with torch.no_grad():
        out = vl_model(**inputs)
    assert out.logits.shape == (1, inputs["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(out.logits).all()

    without_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        vl_model(**without_types)

    generated = vl_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert torch.equal(generated[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])


def test_qwen3vl_config_matches_tokenizer(vl_model, tokenizer):
    cfg = vl_model.config
    assert cfg.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert cfg.text_config.vocab_size == len(tokenizer)
    assert sum(cfg.text_config.rope_parameters["mrope_section"]) == cfg.text_config.head_dim // 2
    assert tokenizer.eos_token_id in vl_model.generation_config.eos_token_id
    assert vl_model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert vl_model.dtype == torch.float32


def test_builders_are_deterministic(tokenizer):
    a, b = build_tiny_qwen3vl(tokenizer, seed=3), build_tiny_qwen3vl(tokenizer, seed=3)
    c = build_tiny_qwen3vl(tokenizer, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    state = torch.random.get_rng_state()
    build_tiny_text_lm(tokenizer, seed=5)
    assert torch.equal(state, torch.random.get_rng_state())


def test_text_lm_forward(tokenizer):
    model = build_tiny_text_lm(tokenizer).eval()
    batch = tokenizer(["Find x.", r"The answer is \boxed{12}."], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (*batch["input_ids"].shape, len(tokenizer))
    assert math.isfinite(out.loss.item())
    generated = model.generate(**tokenizer(["Find x."], return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert generated.shape[1] <= 3 + 3


def test_save_load_roundtrip_offline(tmp_path: Path, monkeypatch, tokenizer, processor):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    vl_dir = save_tiny_qwen3vl(tmp_path / "vl")
    loaded = AutoModelForImageTextToText.from_pretrained(vl_dir).eval()
    loaded_proc = AutoProcessor.from_pretrained(vl_dir)
    loaded_tok = AutoTokenizer.from_pretrained(vl_dir)
    reference = build_tiny_qwen3vl(tokenizer).eval()
    inputs = _vl_inputs(processor)
    reloaded_inputs = _vl_inputs(loaded_proc)
    for key in inputs:
        assert torch.equal(inputs[key], reloaded_inputs[key]), key
    with torch.no_grad():
        assert torch.equal(reference(**inputs).logits, loaded(**reloaded_inputs).logits)
    text = "<|im_start|>user\nFind x. \\boxed{5}<|im_end|>"
    assert loaded_tok(text).input_ids == tokenizer(text).input_ids
    assert loaded_tok.chat_template == CHAT_TEMPLATE
    assert loaded_proc.chat_template == CHAT_TEMPLATE
    assert (loaded_tok.pad_token, loaded_tok.eos_token) == ("<|endoftext|>", "<|im_end|>")

    lm_dir = save_tiny_text_lm(tmp_path / "lm")
    lm = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    lm_tok = AutoTokenizer.from_pretrained(lm_dir)
    batch = lm_tok(["Find the area."], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(lm(**batch).logits, build_tiny_text_lm(tokenizer).eval()(**batch).logits)


# --------------------------------------------------------------------------------------------- Geo3k


def _expected_answer(kind: str, v: dict[str, int]) -> int:
    if kind == "hypotenuse":
        return math.isqrt(v["a"] ** 2 + v["b"] ** 2)
    if kind == "leg":
        return math.isqrt(v["c"] ** 2 - v["a"] ** 2)
    if kind == "rect_area":
        return v["w"] * v["h"]
    if kind == "rect_perimeter":
        return 2 * (v["w"] + v["h"])
    return 180 - v["alpha"] - v["beta"]


def test_geo3k_like_dataset():
    ds = make_geo3k_like(n=10, seed=0, image_size=64)
    assert ds.column_names == ["images", "problem", "answer"]
    assert len(ds) == 10
    problems = sample_geo3k_problems(10, seed=0)
    assert {p.kind for p in problems} == set(GEO3K_KINDS)
    for row, spec in zip(ds, problems, strict=True):
        assert isinstance(row["images"], list) and len(row["images"]) == 1
        image = row["images"][0]
        assert isinstance(image, Image.Image) and image.size == (64, 64) and image.mode == "RGB"
        assert np.asarray(image).min() < 128  # something is drawn
        assert isinstance(row["problem"], str) and row["problem"].startswith("<image>")
        assert isinstance(row["answer"], str) and row["answer"] == spec.answer
        if spec.kind in ("hypotenuse", "leg"):
            assert spec.values["a"] ** 2 + spec.values["b"] ** 2 == spec.values["c"] ** 2
        assert int(row["answer"]) == _expected_answer(spec.kind, spec.values)
    again = make_geo3k_like(n=10, seed=0, image_size=64)
    assert again["answer"] == ds["answer"]
    assert np.array_equal(np.asarray(again[3]["images"][0]), np.asarray(ds[3]["images"][0]))
    assert make_geo3k_like(n=10, seed=1)["answer"] != ds["answer"]


def test_geo3k_parquet_roundtrip(tmp_path: Path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = write_geo3k_parquet(tmp_path / "geo3k", n_train=6, n_test=3, seed=0)
    files = {"train": str(out / "train.parquet"), "test": str(out / "test.parquet")}
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    assert (len(loaded["train"]), len(loaded["test"])) == (6, 3)
    original = make_geo3k_like(n=6, seed=0)
    assert loaded["train"].features == original.features
    assert loaded["train"]["answer"] == original["answer"]
    assert loaded["train"]["problem"] == original["problem"]
    image = loaded["train"][0]["images"][0]
    assert isinstance(image, Image.Image)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(original[0]["images"][0]))
