"""Teacher contexts for non-Qwen VLM families (issue 7, item 7): LLaVA-NeXT (``image_sizes``), Gemma-3
(``token_type_ids``) and Idefics3 / SmolVLM (row-indexed ``pixel_values`` with ``pixel_attention_mask``), built
offline by ``cepo.testing.other_vlms``.

1. Alignment: with an empty hint the teacher rows score the response exactly as an unpadded single-row forward of
   the processor's own encoding of the student prompt, the family's input is in ``TeacherInputs.extra`` and reaches
   the forward (which needs it, or, for Idefics3's mask, changes when it hides pixels); micro-batches
   (``TeacherInputs.select``) score the same.
2. TRL: ``CEPOTrainer`` trains on the tiny model with real teacher passes (rewards differ within every group), and
   teacher rows whose context is the student prompt give TRL's own old log-probs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from cepo.data import student_prompt, to_conversational
from cepo.teacher import STUDENT_TEMPLATE, TeacherInputs, build_teacher_inputs, teacher_logprobs
from cepo.testing import OTHER_VLM_FAMILIES, build_tiny_vlm, make_geo3k_like
from cepo.testing.trl_runs import first_half_correct, pad_responses

FAMILIES = sorted(OTHER_VLM_FAMILIES)
RESPONSES = ["x = 5 so \\boxed{5}", "\\boxed{12}", "The area is 6 and the answer is \\boxed{6}"]
PROBLEMS = ["Find x.", "Find the hypotenuse of the right triangle with legs 9 and 12.", "Find the area."]
# (width, height): LLaVA-NeXT tiles them 2x2, 1x2 (batched pixel_values padded to 4 tiles) and 2x2 unpadded to 40x64;
# Idefics3 splits them into 4, 2 and 4 tiles plus a global view (the second row padded with 2 all-zero slots)
IMAGE_SIZES = [(64, 64), (64, 32), (40, 64)]


def _noise_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A seeded random RGB image of ``size`` (width, height): image tokens differ from each other, unlike a flat
    colour's, so attention among them (Gemma-3's bidirectional image blocks) matters."""
    width, height = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _direct_logps(model: torch.nn.Module, encoded: dict[str, torch.Tensor], response: list[int]) -> torch.Tensor:
    """Unpadded single-row forward over the processor's encoding of the student prompt + the response."""
    prompt_ids = encoded["input_ids"]
    extra = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
    if "token_type_ids" in extra:  # per token: the response is text
        types = extra["token_type_ids"]
        extra["token_type_ids"] = torch.cat([types, torch.zeros(1, len(response), dtype=types.dtype)], dim=1)
    ids = torch.cat([prompt_ids, torch.tensor([response])], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0]
    p = prompt_ids.shape[1]
    logps = torch.log_softmax(logits[p - 1 : p - 1 + len(response)].float(), dim=-1)
    return logps.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def _changes_or_fails(model: torch.nn.Module, inputs: TeacherInputs, want: torch.Tensor) -> bool:
    """Whether scoring ``inputs`` fails or gives other numbers than ``want``."""
    try:
        got = teacher_logprobs(model, inputs)
    except (TypeError, ValueError, RuntimeError):
        return True
    return bool((got - want).abs().max() > 1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_alignment_with_image(family: str) -> None:
    """Empty hint + STUDENT_TEMPLATE: teacher log-probs (whole batch, left-padded prompts, right-padded responses)
    equal a single-row forward of the processor's own encoding, to 1e-5; micro-batching (``select``) too."""
    model, processor = build_tiny_vlm(family)
    model.eval()
    key = OTHER_VLM_FAMILIES[family]["family_key"]
    images = [[_noise_image(i, size)] for i, size in enumerate(IMAGE_SIZES)]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": student_prompt(p)}]}]
                for p in PROBLEMS]
    response_ids, mask, rows = pad_responses(processor.tokenizer, RESPONSES)
    inputs = build_teacher_inputs(processor, messages, [""] * 3, response_ids, mask, images, template=STUDENT_TEMPLATE)
    assert key in inputs.extra and inputs.pixel_values is not None and inputs.image_grid_thw is None
    assert "image_grid_thw" not in inputs.model_kwargs()
    got = teacher_logprobs(model, inputs)
    for i, response in enumerate(rows):
        text = processor.apply_chat_template(messages[i], add_generation_prompt=True, tokenize=False)
        encoded = processor(text=[text], images=images[i], return_tensors="pt")
        assert key in encoded
        torch.testing.assert_close(got[i, : len(response)], _direct_logps(model, encoded, response),
                                   rtol=1e-5, atol=1e-5)
    assert torch.all(got[mask == 0] == 0)
    # micro-batching splits the image-indexed pixel_values (and image_sizes / token_type_ids) per row
    torch.testing.assert_close(teacher_logprobs(model, inputs, micro_batch_size=1), got, rtol=1e-5, atol=1e-5)
    reordered = inputs.select([2, 0])
    assert reordered.pixel_values is not None and reordered.pixel_values.shape[0] == 2
    torch.testing.assert_close(teacher_logprobs(model, reordered), got[[2, 0]], rtol=1e-5, atol=1e-5)
    # the family's input matters: without it (the dropped-key bug) the forward fails or scores differently
    dropped = dataclasses.replace(inputs, extra={k: v for k, v in inputs.extra.items() if k != key})
    if OTHER_VLM_FAMILIES[family]["family_key_required"]:
        assert _changes_or_fails(model, dropped, got)
    else:  # Idefics3: full-size tiles, so the model rebuilds the same mask; one that hides pixels reaches the model
        torch.testing.assert_close(teacher_logprobs(model, dropped), got, rtol=1e-5, atol=1e-5)
        hidden = inputs.extra[key].clone()
        hidden[..., hidden.shape[-1] // 2 :] = 0
        assert _changes_or_fails(model, dataclasses.replace(inputs, extra={**inputs.extra, key: hidden}), got)
    # the pixels reach the model (other pixels, other numbers), and the text-only teacher differs
    blank = dataclasses.replace(inputs, pixel_values=torch.zeros_like(inputs.pixel_values))
    assert _changes_or_fails(model, blank, got)
    blind = build_teacher_inputs(processor, messages, [""] * 3, response_ids, mask, images,
                                 template=STUDENT_TEMPLATE, include_image=False)
    assert blind.pixel_values is None and "image_sizes" not in blind.extra
    assert not torch.allclose(teacher_logprobs(model, blind), got)


def test_select_refuses_layouts_it_cannot_split() -> None:
    """Image inputs ``select`` cannot split per row (a ``pixel_attention_mask`` next to pixel_values that are not
    row-indexed, as LFM2-VL's tile-indexed ones, or pixel_values that are neither patch-, image- nor row-indexed)
    raise, naming them, instead of being dropped."""
    ids = torch.ones(2, 5, dtype=torch.long)
    base = TeacherInputs(input_ids=ids, attention_mask=ids, prompt_length=3, response_ids=ids[:, 3:],
                         response_mask=ids[:, 3:], num_images=[1, 1], pixel_values=torch.zeros(2, 3, 4, 4))
    assert torch.equal(base.select([1]).pixel_values, base.pixel_values[1:])
    with pytest.raises(ValueError, match=r"\['pixel_attention_mask'\]"):
        dataclasses.replace(base, extra={"pixel_attention_mask": torch.ones(2, 1, 4, 4)}).select([0])
    with pytest.raises(ValueError, match=r"\['pixel_values'\]"):
        dataclasses.replace(base, pixel_values=torch.zeros(6, 3, 4, 4)).select([0])


def test_select_splits_row_indexed_images() -> None:
    """Idefics3's layout: ``pixel_values`` (rows, slots, 3, H, W) and ``pixel_attention_mask`` (rows, slots, H, W),
    indexed by row whatever the image counts (here 2, 0 and 1 images: as many as rows, so an image-indexed reading
    would pick the wrong pixels), padded slots all zero. ``select`` takes the rows and trims slots that are padding
    in all of them; a selection without images has none."""
    ids = torch.arange(15).reshape(3, 5)
    pixels = torch.zeros(3, 2, 3, 4, 4)
    pixels[0] = torch.rand(2, 3, 4, 4) + 1
    pixels[2, 0] = torch.rand(3, 4, 4) + 1
    mask = pixels.ne(0).any(2).long()
    types = torch.zeros(3, 5, dtype=torch.long)
    batch = TeacherInputs(input_ids=ids, attention_mask=torch.ones_like(ids), prompt_length=3,
                          response_ids=ids[:, 3:], response_mask=torch.ones_like(ids[:, 3:]), num_images=[2, 0, 1],
                          pixel_values=pixels, extra={"pixel_attention_mask": mask, "token_type_ids": types})
    both = batch.select([2, 0])
    assert both.pixel_values is not None and torch.equal(both.pixel_values, pixels[[2, 0]])
    assert torch.equal(both.extra["pixel_attention_mask"], mask[[2, 0]]) and both.num_images == [1, 2]
    assert torch.equal(both.input_ids, ids[[2, 0]]) and torch.equal(both.extra["token_type_ids"], types[[2, 0]])
    last = batch.select([2])  # its second slot is padding: trimmed
    assert last.pixel_values is not None and torch.equal(last.pixel_values, pixels[2:, :1])
    assert torch.equal(last.extra["pixel_attention_mask"], mask[2:, :1])
    empty = batch.select([1])
    assert empty.pixel_values is None and set(empty.extra) == {"token_type_ids"} and empty.num_images == [0]
    with pytest.raises(ValueError, match=r"\['image_sizes'\]"):
        dataclasses.replace(batch, extra={**batch.extra, "image_sizes": torch.ones(3, 2)}).select([0])


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_cepo_trains_with_teacher_passes(family: str, tmp_path: Path) -> None:
    """Two optimizer steps of CEPO on the tiny model with the family's image inputs in every teacher pass.

    The teacher template is the student prompt followed by the hint and r- may be empty
    (``cepo_neg_requires_answer=False``), so every r- row's teacher context *is* the student prompt: its log-probs
    must equal TRL's own old log-probs (``steps_per_generation=2 > gradient_accumulation_steps=1`` makes TRL
    compute them). P_S scored by the trainer for a few rows (``TeacherInputs.select`` on TRL's batch) too.
    """
    from cepo.algorithms import CreditInputs
    from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer, make_math_reward

    class Recording(CEPOTrainer):
        recorded: list[dict[str, torch.Tensor]]

        def _teacher_passes(self, output: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            super()._teacher_passes(output, *args, **kwargs)
            credit = next(a for a in (*args, *kwargs.values()) if isinstance(a, CreditInputs))
            self.recorded.append({
                "logp_neg": credit.logp_neg.clone(), "has_negative": credit.has_negative.clone(),
                "old": output["old_per_token_logps"].clone(), "mask": output["completion_mask"].clone(),
                "student": self._student_logps(output, [5, 0, 3]), "key": output.get(key),
            })

    key = OTHER_VLM_FAMILIES[family]["family_key"]
    model, processor = build_tiny_vlm(family)
    args = CEPOGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, steps_per_generation=2,
        max_completion_length=8, max_steps=2, learning_rate=1e-3, report_to="none", use_cpu=True, bf16=False,
        save_strategy="no", logging_steps=1, cepo_method="cepo", cepo_teacher_template=STUDENT_TEMPLATE,
        cepo_neg_requires_answer=False,
    )
    trainer = Recording(model=model, reward_funcs=[make_math_reward(), first_half_correct], args=args,
                        train_dataset=to_conversational(make_geo3k_like(8)), processing_class=processor)
    trainer.recorded = []
    trainer.train()

    assert trainer.state.global_step == 2 and len(trainer.recorded) == 1
    rec = trainer.recorded[0]
    assert rec["key"] is not None  # TRL fed the family's input to its own forward
    kinds = [c["kind"] for c in trainer.teacher_calls]
    assert kinds.count("pos") == 8 and kinds.count("neg") == 8  # A != 0 on every row; r- = "" for every group
    teacher = [e for e in trainer.forward_log if e["kind"] == "teacher"]
    assert teacher == [{"step": 0, "kind": "teacher", "rows": 16, "padded_rows": 16, "chunks": 4}]
    # only our direct call, on those 3 rows (select splits TRL's image inputs; no fallback to the whole batch)
    assert [(e["rows"], e["padded_rows"]) for e in trainer.forward_log if e["kind"] == "student"] == [(3, 3)]
    mask = rec["mask"].bool()
    assert bool(rec["has_negative"].all()) and mask.any()
    # r- rows: context = student prompt + "" -> TRL's old log-probs
    torch.testing.assert_close(rec["logp_neg"][mask], rec["old"][mask], rtol=1e-4, atol=1e-4)
    rows = [5, 0, 3]
    torch.testing.assert_close(rec["student"][rows][mask[rows]], rec["old"][rows][mask[rows]], rtol=1e-4, atol=1e-4)
    assert torch.all(rec["student"][[1, 2, 4, 6, 7]] == 0)


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_topk_teacher_micro_batches(family: str, tmp_path: Path) -> None:
    """OPSD in top-k mode scores its teacher rows with a plain forward in micro-batches of
    ``per_device_train_batch_size`` (``teacher_topk_logprobs`` -> ``TeacherInputs.select``): 8 teacher rows in
    chunks of 4 must split the family's image inputs (Idefics3's row-indexed ``pixel_values`` and
    ``pixel_attention_mask`` raised here before ``select`` could split them)."""
    from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer, make_math_reward

    model, processor = build_tiny_vlm(family)
    args = CEPOGRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, steps_per_generation=2,
        max_completion_length=8, max_steps=1, learning_rate=1e-3, report_to="none", use_cpu=True, bf16=False,
        save_strategy="no", logging_steps=1, cepo_method="opsd", cepo_distill_mode="topk", cepo_distill_topk=5,
        cepo_success_threshold=0.5,
    )
    trainer = CEPOTrainer(model=model, reward_funcs=[make_math_reward(), first_half_correct], args=args,
                          train_dataset=to_conversational(make_geo3k_like(8)), processing_class=processor)
    trainer.train()
    assert trainer.state.global_step == 1
    teacher = [e for e in trainer.forward_log if e["kind"] == "teacher"]
    assert teacher == [{"step": 0, "kind": "teacher", "rows": 8, "padded_rows": 8, "chunks": 2, "topk": 5}]
