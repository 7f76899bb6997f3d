"""Teacher contexts: alignment invariant (empty hint + student template = student log-probs), hints, images."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cepo.data import student_prompt
from cepo.teacher import (
    DEFAULT_TEACHER_TEMPLATE,
    STUDENT_TEMPLATE,
    build_teacher_inputs,
    render_teacher_messages,
    teacher_logprobs,
)
from cepo.testing import build_qwen_tokenizer, build_tiny_processor, build_tiny_qwen3vl, build_tiny_text_lm
from cepo.testing.trl_runs import pad_responses

RESPONSES = ["x = 5 so \\boxed{5}", "\\boxed{12}", "The area is 6 and the answer is \\boxed{6}"]
PROBLEMS = ["Find x.", "Find the hypotenuse of the right triangle with legs 9 and 12.", "Find the area."]


@pytest.fixture(scope="module")
def tokenizer():
    return build_qwen_tokenizer()


def _direct_logps(model, prompt_ids: torch.Tensor, response: list[int], **extra: torch.Tensor) -> torch.Tensor:
    """Unpadded single-row forward over prompt + response: the student's log-probs, computed independently."""
    ids = torch.cat([prompt_ids, torch.tensor([response])], dim=1)
    if "mm_token_type_ids" in extra:
        types = extra["mm_token_type_ids"]
        extra["mm_token_type_ids"] = torch.cat([types, torch.zeros(1, len(response), dtype=types.dtype)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0]
    p = prompt_ids.shape[1]
    logps = torch.log_softmax(logits[p - 1 : p - 1 + len(response)].float(), dim=-1)
    return logps.gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)


def test_alignment_text_model(tokenizer) -> None:
    model = build_tiny_text_lm(tokenizer).eval()
    messages = [[{"role": "user", "content": student_prompt(p)}] for p in PROBLEMS]
    response_ids, mask, rows = pad_responses(tokenizer, RESPONSES)
    inputs = build_teacher_inputs(tokenizer, messages, [""] * 3, response_ids, mask, template=STUDENT_TEMPLATE)
    got = teacher_logprobs(model, inputs)
    assert inputs.attention_mask[:, 0].tolist().count(0) >= 1  # prompts really were left-padded
    for i, response in enumerate(rows):
        text = tokenizer.apply_chat_template(messages[i], add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        want = _direct_logps(model, prompt, response)
        torch.testing.assert_close(got[i, : len(response)], want, rtol=1e-5, atol=1e-5)
        assert torch.all(got[i, len(response) :] == 0)


def test_alignment_qwen3vl_with_image(tokenizer) -> None:
    processor = build_tiny_processor(tokenizer)
    model = build_tiny_qwen3vl(tokenizer).eval()
    images = [[Image.new("RGB", (64 + 32 * i, 64), (40 * i, 200, 90))] for i in range(3)]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": student_prompt(p)}]}]
                for p in PROBLEMS]
    response_ids, mask, rows = pad_responses(tokenizer, RESPONSES)
    inputs = build_teacher_inputs(processor, messages, [""] * 3, response_ids, mask, images, template=STUDENT_TEMPLATE)
    got = teacher_logprobs(model, inputs)
    assert inputs.pixel_values is not None and inputs.mm_token_type_ids is not None
    for i, response in enumerate(rows):
        text = processor.apply_chat_template(messages[i], add_generation_prompt=True, tokenize=False)
        enc = processor(text=[text], images=images[i], return_tensors="pt")
        want = _direct_logps(model, enc["input_ids"], response, pixel_values=enc["pixel_values"],
                             image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=enc["mm_token_type_ids"])
        torch.testing.assert_close(got[i, : len(response)], want, rtol=1e-5, atol=1e-5)
    # micro-batching (which splits pixel_values per row) gives the same numbers
    torch.testing.assert_close(teacher_logprobs(model, inputs, micro_batch_size=1), got, rtol=1e-5, atol=1e-5)
    # the image matters: the text-only teacher scores the same response differently
    blind = build_teacher_inputs(processor, messages, [""] * 3, response_ids, mask, images,
                                 template=STUDENT_TEMPLATE, include_image=False)
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert blind.pixel_values is None and not (blind.input_ids == image_pad).any()
    assert not torch.allclose(teacher_logprobs(model, blind), got)


def test_hint_goes_into_the_user_turn(tokenizer) -> None:
    processor = build_tiny_processor(tokenizer)
    image = Image.new("RGB", (64, 64))
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]]
    rendered = render_teacher_messages(messages[0], "12")
    assert rendered[0]["content"][1]["text"] == "Find x.\n\nHere is a sample answer: 12"
    assert messages[0][0]["content"][1]["text"] == "Find x."  # the input is not modified
    response_ids, mask, _ = pad_responses(tokenizer, RESPONSES)
    inputs = build_teacher_inputs(processor, messages, ["12"], response_ids[:1], mask[:1], [[image]])
    prompt = tokenizer.decode(inputs.input_ids[0, : inputs.prompt_length])
    assert prompt.endswith("Here is a sample answer: 12<|im_end|>\n<|im_start|>assistant\n")
    assert torch.equal(inputs.input_ids[0, inputs.prompt_length :], response_ids[0])
    assert DEFAULT_TEACHER_TEMPLATE.startswith("{{ prompt }}")


def test_teacher_bad_input(tokenizer) -> None:
    processor = build_tiny_processor(tokenizer)
    response_ids, mask, _ = pad_responses(tokenizer, RESPONSES)
    msgs = [[{"role": "user", "content": "Find x."}]] * 3
    with pytest.raises(ValueError, match="hints has 2 entries"):
        build_teacher_inputs(tokenizer, msgs, ["1", "2"], response_ids, mask)
    with pytest.raises(ValueError, match="response_mask has shape"):
        build_teacher_inputs(tokenizer, msgs, ["1"] * 3, response_ids, mask[:, :2])
    with pytest.raises(ValueError, match=r"must use \{\{ prompt \}\} and \{\{ hint \}\}"):
        build_teacher_inputs(tokenizer, msgs, ["1"] * 3, response_ids, mask, template="{{ prompt }} only")
    with pytest.raises(ValueError, match="hint is None"):
        render_teacher_messages(msgs[0], None)  # type: ignore[arg-type]
    image_msgs = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]] * 3
    with pytest.raises(ValueError, match="row 0: the conversation has 1 image"):
        build_teacher_inputs(processor, image_msgs, ["1"] * 3, response_ids, mask, images=[[], [], []])
    with pytest.raises(ValueError, match=r"row 0: .* more than cepo\.teacher_max_prompt_length=4"):
        build_teacher_inputs(tokenizer, msgs, ["1"] * 3, response_ids, mask, max_prompt_length=4)
    bare = build_qwen_tokenizer()
    bare.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        build_teacher_inputs(bare, msgs, ["1"] * 3, response_ids, mask)


def test_alignment_with_chat_template_kwargs(tokenizer) -> None:
    """Student prompts rendered with chat-template variables (TRL's ``chat_template_kwargs``, verl's
    ``data.apply_chat_template_kwargs``; here Qwen3's ``enable_thinking=False``): the teacher context rendered with
    the same variables and an empty hint scores exactly as the student; without them it does not."""
    from cepo.integrations.verl.teacher_batch import build_teacher_rows

    kwargs = {"enable_thinking": False}
    model = build_tiny_text_lm(tokenizer).eval()
    messages = [[{"role": "user", "content": student_prompt(p)}] for p in PROBLEMS]
    response_ids, mask, rows = pad_responses(tokenizer, RESPONSES)
    inputs = build_teacher_inputs(tokenizer, messages, [""] * 3, response_ids, mask, template=STUDENT_TEMPLATE,
                                  chat_template_kwargs=kwargs)
    got = teacher_logprobs(model, inputs)
    verl_rows = build_teacher_rows(tokenizer, messages, [""] * 3, [torch.tensor(r) for r in rows],
                                   template=STUDENT_TEMPLATE, chat_template_kwargs=kwargs)
    for i, response in enumerate(rows):
        text = tokenizer.apply_chat_template(messages[i], add_generation_prompt=True, tokenize=False, **kwargs)
        assert text.endswith("<think>\n\n</think>\n\n")
        prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        torch.testing.assert_close(got[i, : len(response)], _direct_logps(model, prompt, response), rtol=1e-5,
                                   atol=1e-5)
        assert torch.equal(verl_rows[i].prompt_ids, prompt[0])
    plain = build_teacher_inputs(tokenizer, messages, [""] * 3, response_ids, mask, template=STUDENT_TEMPLATE)
    assert plain.prompt_length < inputs.prompt_length  # the variables really change the prompt


def test_processed_image_inputs_give_the_same_teacher(tokenizer) -> None:
    """One builder for both engines: from verl's processed image inputs (pixel_values + image_grid_thw, no PIL
    images) the teacher batch equals the one built from the images (ids, pixels, image tokens, log-probs)."""
    processor = build_tiny_processor(tokenizer)
    model = build_tiny_qwen3vl(tokenizer).eval()
    images = [[Image.new("RGB", (64 + 32 * i, 64), (40 * i, 200, 90))] for i in range(3)]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": student_prompt(p)}]}]
                for p in PROBLEMS]
    response_ids, mask, _ = pad_responses(tokenizer, RESPONSES)
    processed = []
    for conv, imgs in zip(messages, images, strict=True):
        text = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        enc = processor(text=[text], images=imgs, return_tensors="pt")
        processed.append({"pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]})
    from_images = build_teacher_inputs(processor, messages, ["12", "5", "x"], response_ids, mask, images)
    from_inputs = build_teacher_inputs(processor, messages, ["12", "5", "x"], response_ids, mask,
                                       image_inputs=processed)
    assert torch.equal(from_inputs.input_ids * from_inputs.attention_mask,
                       from_images.input_ids * from_images.attention_mask)
    assert torch.equal(from_inputs.pixel_values, from_images.pixel_values)
    assert torch.equal(from_inputs.image_grid_thw, from_images.image_grid_thw)
    assert torch.equal(from_inputs.mm_token_type_ids, from_images.mm_token_type_ids)
    torch.testing.assert_close(teacher_logprobs(model, from_inputs), teacher_logprobs(model, from_images),
                               rtol=1e-5, atol=1e-5)
    blind = build_teacher_inputs(processor, messages, ["12"] * 3, response_ids, mask, image_inputs=processed,
                                 include_image=False)
    assert blind.pixel_values is None and blind.mm_token_type_ids is None
