"""Teacher rows sent to the actor workers, scored by the tiny Qwen3-VL on CPU."""

from __future__ import annotations

import pytest
import torch
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import left_right_2_no_padding

from cepo.integrations.verl.reward import compute_score
from cepo.integrations.verl.teacher_batch import (
    TeacherLengthError,
    build_teacher_row,
    build_teacher_rows,
    nested_row_fields,
    pack_teacher_dataproto,
)
from cepo.teacher import build_teacher_inputs, teacher_logprobs

HINTS = ["12", "5", "x=3"]
T = 7


def _responses():
    g = torch.Generator().manual_seed(0)
    resp = torch.randint(10, 200, (3, T), generator=g)
    mask = torch.ones(3, T, dtype=torch.long)
    mask[1, 5:] = 0
    return resp, mask


def _student_mm(processor, messages, images):
    """The rollout's multi_modal_inputs, as verl's agent loop computes them (processor on text + images)."""
    out = []
    for conv, imgs in zip(messages, images, strict=True):
        text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        enc = processor(text=[text], images=imgs, return_tensors="pt")
        out.append({"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]})
    return out


def _forward_logprobs(model, processor, dp) -> torch.Tensor:
    """Sampled-token log-probs of a packed teacher DataProto, with its own position_ids and images."""
    b = dp.batch
    mm = list(dp.non_tensor_batch["multi_modal_inputs"])
    kwargs = {}
    if mm[0]:
        kwargs = {"pixel_values": torch.cat([m["pixel_values"] for m in mm]),
                  "image_grid_thw": torch.cat([m["image_grid_thw"] for m in mm]),
                  "mm_token_type_ids": (b["input_ids"] == processor.image_token_id).long()}
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       position_ids=b["position_ids"].transpose(0, 1), **kwargs).logits
    p, t = b["prompts"].shape[1], b["responses"].shape[1]
    logps = torch.log_softmax(logits[:, p - 1 : p + t - 1].float(), -1)
    return logps.gather(-1, b["responses"].unsqueeze(-1)).squeeze(-1) * b["response_mask"]


@pytest.mark.parametrize("include_image", [True, False])
def test_teacher_batch_logprobs_equal_direct_forward(vl_model, vl_processor, geo_rows, include_image):
    messages, images, _ = geo_rows
    resp, mask = _responses()
    direct = teacher_logprobs(vl_model, build_teacher_inputs(vl_processor, messages, HINTS, resp, mask, images=images,
                                                             include_image=include_image))
    rows = build_teacher_rows(vl_processor, messages, HINTS, [resp[i][mask[i].bool()] for i in range(3)],
                              _student_mm(vl_processor, messages, images), include_image=include_image,
                              rope_index_fn=vl_processor.get_rope_index)
    dp = pack_teacher_dataproto(rows, vl_processor.tokenizer.pad_token_id, response_length=T)
    assert dp.batch["position_ids"].shape == (3, 4, dp.batch["input_ids"].shape[1])
    image_tokens = (dp.batch["input_ids"] == vl_processor.image_token_id).sum()
    assert (image_tokens > 0) == include_image
    ours = _forward_logprobs(vl_model, vl_processor, dp)
    torch.testing.assert_close(ours, direct, rtol=1e-5, atol=1e-5)
    # the hint is in the context: a different hint changes the teacher's log-probs
    other = build_teacher_rows(vl_processor, messages, ["999"] * 3, [resp[i][mask[i].bool()] for i in range(3)],
                               _student_mm(vl_processor, messages, images), include_image=include_image,
                               rope_index_fn=vl_processor.get_rope_index)
    other_lp = _forward_logprobs(vl_model, vl_processor,
                                 pack_teacher_dataproto(other, vl_processor.tokenizer.pad_token_id, T))
    assert not torch.allclose(other_lp, ours)


def test_teacher_batch_goes_through_verl_no_padding_conversion(vl_processor, geo_rows):
    messages, images, _ = geo_rows
    resp, mask = _responses()
    rows = build_teacher_rows(vl_processor, messages, HINTS, [resp[i][mask[i].bool()] for i in range(3)],
                              _student_mm(vl_processor, messages, images), rope_index_fn=vl_processor.get_rope_index)
    dp = pack_teacher_dataproto(rows, vl_processor.tokenizer.pad_token_id, T)
    td = left_right_2_no_padding(dp.batch.clone())
    assert td["input_ids"].is_nested and td["position_ids"].is_nested
    for i, row in enumerate(rows):
        assert torch.equal(td["input_ids"][i], row.input_ids)
        assert torch.equal(td["position_ids"][i], row.position_ids)
    assert tu.get(td, "max_response_len") == T
    fields = nested_row_fields(rows[0])
    assert fields["position_ids"].shape == (4, fields["input_ids"].numel())
    assert fields["response_mask"].numel() == fields["responses"].numel() == int(mask[0].sum())


@pytest.mark.parametrize("include_image", [True, False])
def test_rope_positions_match_verls_agent_loop(vl_processor, geo_rows, include_image):
    """A teacher row's (4, L) positions are the ones verl's agent loop computes for that sequence
    (AgentLoopWorker._compute_position_ids: text positions on row 0, M-RoPE rows 1-3 from the processor's bound
    get_rope_index, its own mm_token_type_ids from the image token), given the processor's own image inputs."""
    from types import SimpleNamespace

    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    messages, images, _ = geo_rows
    resp, _ = _responses()
    row = build_teacher_row(vl_processor, messages[0], "12", resp[0], _student_mm(vl_processor, messages, images)[0],
                            include_image=include_image, rope_index_fn=vl_processor.get_rope_index)
    ids = row.input_ids.unsqueeze(0)
    text = vl_processor.apply_chat_template(messages[0], add_generation_prompt=True, tokenize=False)
    processed = vl_processor(text=[text], images=images[0], return_tensors="pt")  # what the agent loop holds
    mm_inputs = {"mm_token_type_ids": processed["mm_token_type_ids"]}
    if include_image:
        mm_inputs["image_grid_thw"] = processed["image_grid_thw"]
    worker = SimpleNamespace(processor=vl_processor)  # the method reads only self.processor
    verl_positions = AgentLoopWorker._compute_position_ids(worker, ids, torch.ones_like(ids), mm_inputs)
    assert verl_positions.shape == (1, 4, ids.shape[1])
    assert torch.equal(row.position_ids, verl_positions[0])
    image_tokens = int((ids == vl_processor.image_token_id).sum())
    assert (image_tokens > 0) == include_image
    if include_image:  # M-RoPE: the image's positions are not the text's arange
        assert not torch.equal(row.position_ids[1], row.position_ids[0])


def test_text_only_tokenizer_gives_1d_positions(geo_rows):
    from cepo.testing import build_qwen_tokenizer

    tok = build_qwen_tokenizer()
    conv = [{"role": "user", "content": "Find x."}]
    row = build_teacher_row(tok, conv, "12", torch.tensor([5, 6, 7]))
    assert row.position_ids.shape == (row.input_ids.numel(),)
    assert "sample answer: 12" in tok.decode(row.prompt_ids)


def test_teacher_prompt_too_long_names_row_and_key(vl_processor, geo_rows):
    messages, images, _ = geo_rows
    resp, _ = _responses()
    mm = _student_mm(vl_processor, messages, images)
    with pytest.raises(TeacherLengthError, match=r"row 2: .*cepo\.teacher_max_prompt_length=10"):
        build_teacher_rows(vl_processor, messages[:1], ["1"], [resp[0]], mm[:1], max_prompt_length=10, row_ids=[2])


def test_image_count_mismatch_is_reported(vl_processor, geo_rows):
    messages, images, _ = geo_rows
    mm = _student_mm(vl_processor, messages, images)[0]
    two = {"pixel_values": torch.cat([mm["pixel_values"]] * 2), "image_grid_thw": torch.cat([mm["image_grid_thw"]] * 2)}
    with pytest.raises(ValueError, match=r"row 0: .*1 image placeholder"):
        build_teacher_row(vl_processor, messages[0], "1", torch.tensor([5]), two)


def test_reward_function_through_verl_loader():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from cepo.recipes import compose_method_config

    cfg = compose_method_config("cepo", ["cepo.reward.format_weight=0.2", "cepo.reward.accuracy_weight=0.8"])
    fn = get_custom_reward_fn(cfg)
    out = fn(data_source="geo3k", solution_str=r"so \boxed{12}", ground_truth="12", extra_info={})
    assert out == {"score": pytest.approx(1.0), "acc": 1.0, "format": 1.0}
    out = fn(data_source="geo3k", solution_str=r"\boxed{11}", ground_truth="12", extra_info={})
    assert out["score"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="dataset row 7"):
        compute_score(solution_str="x", ground_truth="", extra_info={"index": 7})


def test_worker_style_nested_logprobs_extract_the_response(vl_model, vl_processor, geo_rows):
    """The trainer reads the worker's full-sequence nested log_probs with verl's response_from_nested."""
    from verl.workers.utils.padding import response_from_nested

    messages, images, _ = geo_rows
    resp, mask = _responses()
    rows = build_teacher_rows(vl_processor, messages, HINTS, [resp[i][mask[i].bool()] for i in range(3)],
                              _student_mm(vl_processor, messages, images), rope_index_fn=vl_processor.get_rope_index)
    full, resp_masks = [], []
    for row in rows:
        dp = pack_teacher_dataproto([row], vl_processor.tokenizer.pad_token_id)
        mm = row.multi_modal_inputs
        with torch.no_grad():
            logits = vl_model(input_ids=dp.batch["input_ids"], position_ids=dp.batch["position_ids"].transpose(0, 1),
                              pixel_values=mm["pixel_values"], image_grid_thw=mm["image_grid_thw"],
                              mm_token_type_ids=(dp.batch["input_ids"] == vl_processor.image_token_id).long()).logits
        # worker convention: position j holds log p(token j+1); the last position is unused
        nxt = torch.cat([row.input_ids[1:], row.input_ids[:1]])
        full.append(torch.log_softmax(logits[0].float(), -1).gather(-1, nxt.unsqueeze(-1)).squeeze(-1))
        resp_masks.append(nested_row_fields(row)["response_mask"])
    got = response_from_nested(torch.nested.as_nested_tensor(full, layout=torch.jagged),
                               torch.nested.as_nested_tensor(resp_masks, layout=torch.jagged))
    direct = teacher_logprobs(vl_model, build_teacher_inputs(vl_processor, messages, HINTS, resp, mask, images=images))
    for i in range(3):
        torch.testing.assert_close(got[i], direct[i][mask[i].bool()], rtol=1e-5, atol=1e-5)
