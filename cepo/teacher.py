"""Teacher contexts: the same response tokens scored under a context that carries a hint.

CEPO (paper Eq. 2) scores every sampled response ``y`` three times with the same weights:
``P_S(y_t) = pi(y_t | x, y<t)`` (the student, i.e. the old log-probs),
``P_T+(y_t) = pi(y_t | x, r+, y<t)`` and ``P_T-(y_t) = pi(y_t | x, r-, y<t)``. This module
builds the teacher inputs ``[x + hint] + y`` and scores them.

The hint goes into the last user turn through a Jinja template (default: the paper's
Appendix B teacher prompt, ``"{{ prompt }}\\n\\nHere is a sample answer: {{ hint }}"``) and
the model's chat template is re-applied, so the teacher prompt is what the model would see
in a real conversation. For Qwen-VL models the image stays in the teacher context
(``pixel_values``, ``image_grid_thw`` and ``mm_token_type_ids``, from which the model's own
``get_rope_index`` derives the M-RoPE positions); ``include_image=False`` drops it, for parity
with the authors' text-only teacher.

Layout: every teacher row is ``[left padding][teacher prompt][response][right padding]``;
the prompt block has one width ``P`` for the batch and the response block is the caller's
``(N, T)`` right-padded response tensor, unchanged. The log-prob of response token ``t`` is read
from the logits at column ``P + t - 1``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jinja2
import torch

DEFAULT_TEACHER_TEMPLATE = "{{ prompt }}\n\nHere is a sample answer: {{ hint }}"
"""The paper's Appendix B teacher prompt: the student prompt, then the hint."""

STUDENT_TEMPLATE = "{{ prompt }}{{ hint }}"
"""With an empty hint this renders the student prompt unchanged (used by the alignment test)."""

Message = dict[str, Any]


@functools.lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """Compile a teacher template; it must use ``{{ prompt }}`` and ``{{ hint }}``.

    Cached: engines build teacher rows one by one with the same template string."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    try:
        parsed = env.parse(template)
    except jinja2.TemplateSyntaxError as err:
        raise ValueError(f"teacher template is not valid Jinja: {err}") from err
    from jinja2 import meta

    names = meta.find_undeclared_variables(parsed)
    missing = {"prompt", "hint"} - names
    if missing:
        raise ValueError(
            f"teacher template must use {{{{ prompt }}}} and {{{{ hint }}}}; missing {sorted(missing)} "
            f"in {template!r}"
        )
    return env.from_string(template)


def _text_items(content: list[Message]) -> list[int]:
    return [i for i, item in enumerate(content) if isinstance(item, dict) and item.get("type") == "text"]


def _is_image(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") in ("image", "image_url")


def render_teacher_messages(
    messages: Sequence[Message],
    hint: str,
    template: str | jinja2.Template = DEFAULT_TEACHER_TEMPLATE,
    include_image: bool = True,
) -> list[Message]:
    """A copy of ``messages`` whose last user turn carries ``hint`` (Appendix B prompt).

    The template is rendered with ``prompt`` = the text of the last user turn (for a list
    content, its last text item) and ``hint``. With ``include_image=False`` image items are
    removed from every turn (text-only teacher).
    """
    if hint is None:
        raise ValueError("hint is None: rows without a hint (G- empty) must not get a teacher pass")
    compiled = compile_template(template) if isinstance(template, str) else template
    out = copy.deepcopy(list(messages))
    user_turns = [i for i, m in enumerate(out) if m.get("role") == "user"]
    if not user_turns:
        raise ValueError("messages has no user turn to put the hint in")
    if not include_image:
        for message in out:
            if isinstance(message.get("content"), list):
                message["content"] = [item for item in message["content"] if not _is_image(item)]
    turn = out[user_turns[-1]]
    content = turn.get("content")
    if isinstance(content, str):
        turn["content"] = compiled.render(prompt=content, hint=hint)
    elif isinstance(content, list):
        texts = _text_items(content)
        if texts:
            item = content[texts[-1]]
            item["text"] = compiled.render(prompt=item.get("text", ""), hint=hint)
        else:
            content.append({"type": "text", "text": compiled.render(prompt="", hint=hint)})
    else:
        raise ValueError(f"user message content must be a str or a list of items, got {type(content).__name__}")
    return out


def teacher_prompt_text(
    processing_class: Any,
    messages: Sequence[Message],
    hint: str,
    template: str | jinja2.Template = DEFAULT_TEACHER_TEMPLATE,
    include_image: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> tuple[str, list[Message]]:
    """The teacher prompt as text (chat template applied, generation prompt added) and its messages.

    ``chat_template_kwargs`` are the extra chat-template variables the student prompt was rendered with
    (TRL's ``chat_template_kwargs``, verl's ``data.apply_chat_template_kwargs``, e.g. ``enable_thinking``):
    the teacher prompt must be rendered with the same ones, or P_T and P_S differ in more than the hint.
    """
    rendered = render_teacher_messages(messages, hint, template, include_image)
    text = processing_class.apply_chat_template(
        rendered, add_generation_prompt=True, tokenize=False, **dict(chat_template_kwargs or {})
    )
    return text, rendered


class TeacherLengthError(ValueError):
    """A teacher prompt is longer than ``cepo.teacher_max_prompt_length``."""


def check_prompt_length(length: int, max_prompt_length: int | None, row: int, hint: str) -> None:
    """Raise :class:`TeacherLengthError` naming the row and the key when a teacher prompt is too long."""
    if max_prompt_length is not None and length > max_prompt_length:
        raise TeacherLengthError(
            f"row {row}: the teacher prompt (student prompt + hint {hint[:40]!r}) has {length} tokens, more than "
            f"cepo.teacher_max_prompt_length={max_prompt_length}. Raise cepo.teacher_max_prompt_length (and the "
            "actor's max token length) or shorten the template; responses are never truncated."
        )


def image_token_id(processing_class: Any) -> int | None:
    """The id of the processor's image placeholder token (``<|image_pad|>`` for Qwen-VL), or ``None``."""
    token_id = getattr(processing_class, "image_token_id", None)
    if token_id is not None:
        return int(token_id)
    token = getattr(processing_class, "image_token", None)
    return None if token is None else int(tokenizer_of(processing_class).convert_tokens_to_ids(token))


def expand_image_pads(text: str, processing_class: Any, image_grid_thw: torch.Tensor, row: int = 0) -> str:
    """Expand each image placeholder of ``text`` to the image's number of tokens, ``prod(grid) / merge_size**2`` (what
    the Qwen-VL processor does when it processes the pixels itself)."""
    image_token = getattr(processing_class, "image_token", None)
    image_processor = getattr(processing_class, "image_processor", None)
    if image_token is None or image_processor is None:
        raise ValueError(f"row {row}: the row has images but the processor has no image_token/image_processor")
    merge = int(getattr(image_processor, "merge_size", 1))
    parts = text.split(image_token)
    if len(parts) - 1 != len(image_grid_thw):
        raise ValueError(
            f"row {row}: the teacher prompt has {len(parts) - 1} image placeholder(s) but the image inputs have "
            f"{len(image_grid_thw)} image grid(s); the prompt and the rollout's images disagree"
        )
    counts = [int(grid.prod()) // (merge * merge) for grid in image_grid_thw]
    out = parts[0]
    for count, rest in zip(counts, parts[1:], strict=True):
        out += image_token * count + rest
    return out


def teacher_prompt_ids(
    processing_class: Any,
    messages: Sequence[Message],
    hint: str,
    template: str | jinja2.Template = DEFAULT_TEACHER_TEMPLATE,
    include_image: bool = True,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    image_inputs: Mapping[str, torch.Tensor] | None = None,
    max_prompt_length: int | None = None,
    row: int = 0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One teacher prompt as token ids (P,), from already-processed image inputs (verl's rollouts keep
    ``pixel_values`` / ``image_grid_thw``, not the images): the rendered prompt's image placeholders are expanded per
    grid and the text tokenized, so the teacher sees exactly the student's pixels. Returns the ids and the image
    inputs used (empty without images or with ``include_image=False``)."""
    text, _ = teacher_prompt_text(processing_class, messages, hint, template, include_image, chat_template_kwargs)
    used: dict[str, torch.Tensor] = {}
    if include_image and image_inputs and image_inputs.get("image_grid_thw") is not None:
        used = {k: torch.as_tensor(v) for k, v in image_inputs.items() if k in ("pixel_values", "image_grid_thw")}
        text = expand_image_pads(text, processing_class, used["image_grid_thw"], row)
    ids = torch.tensor(tokenizer_of(processing_class)(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    check_prompt_length(int(ids.numel()), max_prompt_length, row, hint)
    return ids, used


def _has_image_processor(processing_class: Any) -> bool:
    return getattr(processing_class, "image_processor", None) is not None


def tokenizer_of(processing_class: Any) -> Any:
    """The tokenizer of a multimodal processor, or the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)


@dataclass
class TeacherInputs:
    """A batch of teacher rows ready for a forward pass (see the module docstring for the layout)."""

    input_ids: torch.Tensor  # (N, P + T)
    attention_mask: torch.Tensor  # (N, P + T)
    prompt_length: int  # P
    response_ids: torch.Tensor  # (N, T)
    response_mask: torch.Tensor  # (N, T)
    num_images: list[int] = field(default_factory=list)  # images per row
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    mm_token_type_ids: torch.Tensor | None = None  # (N, P + T), 1 at image tokens
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """Every other model input the processor returned (e.g. ``token_type_ids`` (N, P + T) for Gemma-3,
    ``image_sizes`` for LLaVA-NeXT, ``pixel_attention_mask`` (N, slots, H, W) for Idefics3), passed to the forward
    unchanged."""

    @property
    def response_length(self) -> int:
        return int(self.response_ids.shape[1])

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for ``model(**kwargs)``."""
        kwargs: dict[str, torch.Tensor] = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            kwargs["pixel_values"] = self.pixel_values
        if self.image_grid_thw is not None:  # Qwen-VL only: other families take no image_grid_thw (not even None)
            kwargs["image_grid_thw"] = self.image_grid_thw
        if self.mm_token_type_ids is not None:
            kwargs["mm_token_type_ids"] = self.mm_token_type_ids
        kwargs.update(self.extra)
        return kwargs

    def _row_indexed_images(self) -> bool:
        """Whether the images are indexed by *row*, with a slot axis and a per-slot ``pixel_attention_mask``
        (Idefics2 / Idefics3 / SmolVLM): ``pixel_values`` (N, slots, C, H, W) and the mask (N, slots, H, W), a row
        with fewer images (or tiles) than the batch's largest padded with all-zero slots, which the model drops."""
        pixel_values, mask = self.pixel_values, self.extra.get("pixel_attention_mask")
        return (
            pixel_values is not None
            and mask is not None
            and self.image_grid_thw is None
            and pixel_values.dim() == 5
            and mask.dim() == 4
            and pixel_values.shape[0] == mask.shape[0] == self.input_ids.shape[0]
            and pixel_values.shape[1] == mask.shape[1]
            and tuple(pixel_values.shape[-2:]) == tuple(mask.shape[-2:])
        )

    def select(self, rows: Sequence[int]) -> TeacherInputs:
        """The sub-batch of ``rows`` (in that order), with their images: Qwen-VL's patch-indexed ``pixel_values``
        (split by ``image_grid_thw``), image-indexed ones (one entry per image, e.g. LLaVA-NeXT with its
        ``image_sizes``, Gemma-3) or row-indexed ones with a ``pixel_attention_mask`` (Idefics3, see
        :meth:`_row_indexed_images`; slots that are padding in every selected row are trimmed). Other layouts (e.g.
        a tile-indexed ``pixel_attention_mask``) cannot be split here and raise: score those batches whole."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        if self._row_indexed_images():
            return self._select_by_row(rows, index)
        image_start = [0]
        for count in self.num_images:
            image_start.append(image_start[-1] + count)
        with_images = rows if self.pixel_values is not None else []
        images = [i for r in with_images for i in range(image_start[r], image_start[r + 1])]
        by_image = (self.pixel_values is not None and self.image_grid_thw is None
                    and self.pixel_values.shape[0] == image_start[-1])
        per_row = {k: v[index] for k, v in self.extra.items() if k == "token_type_ids"}
        if by_image and "image_sizes" in self.extra and images:
            per_row["image_sizes"] = self.extra["image_sizes"][images]
        unsplittable = sorted(set(self.extra) - set(per_row) - ({"image_sizes"} if by_image else set()))
        if self.pixel_values is not None and self.image_grid_thw is None and not by_image:
            unsplittable.append("pixel_values")
        if unsplittable:
            raise ValueError(
                f"cannot select rows of a teacher batch with {unsplittable}; "
                "score it whole (micro_batch_size=None) or through the engine's own log-prob routine"
            )
        pixel_values = image_grid_thw = None
        if by_image and images:
            pixel_values = self.pixel_values[images]
        if self.pixel_values is not None and self.image_grid_thw is not None:
            per_image = self.image_grid_thw.prod(-1).tolist()
            patch_start = [0]
            for n in per_image:
                patch_start.append(patch_start[-1] + n)
            if images:
                pixel_values = torch.cat([self.pixel_values[patch_start[i] : patch_start[i + 1]] for i in images])
                image_grid_thw = self.image_grid_thw[images]
        return self._rows(rows, index, pixel_values, image_grid_thw, per_row)

    def _rows(self, rows: Sequence[int], index: torch.Tensor, pixel_values: torch.Tensor | None,
              image_grid_thw: torch.Tensor | None, extra: dict[str, torch.Tensor]) -> TeacherInputs:
        """The per-token tensors of ``rows`` (``index``) with the given, already selected, image inputs."""
        return TeacherInputs(
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            prompt_length=self.prompt_length,
            response_ids=self.response_ids[index],
            response_mask=self.response_mask[index],
            num_images=[self.num_images[r] for r in rows] if self.num_images else [],
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            mm_token_type_ids=None if self.mm_token_type_ids is None else self.mm_token_type_ids[index],
            extra=extra,
        )

    def _select_by_row(self, rows: Sequence[int], index: torch.Tensor) -> TeacherInputs:
        """:meth:`select` for row-indexed images (:meth:`_row_indexed_images`): every per-row tensor is indexed by
        ``rows``; trailing slots that are padding (all-zero pixels, as the model tells them) in every selected row
        are dropped, and the images with them when no selected row has one."""
        assert self.pixel_values is not None  # checked by _row_indexed_images
        pixel_values = self.pixel_values[index]
        real = pixel_values.flatten(2).ne(0).any(-1)  # (rows, slots): the model drops all-zero slots
        used = real.any(0).nonzero()
        slots = int(used.max()) + 1 if used.numel() else 0
        extra: dict[str, torch.Tensor] = {}
        for key, value in self.extra.items():
            if key == "pixel_attention_mask":
                if slots:
                    extra[key] = value[index, :slots]
            elif key == "token_type_ids":  # per token of each row
                extra[key] = value[index]
            else:
                raise ValueError(
                    f"cannot select rows of a teacher batch with {[key]} next to row-indexed pixel_values; "
                    "score it whole (micro_batch_size=None) or through the engine's own log-prob routine"
                )
        return self._rows(rows, index, pixel_values[:, :slots] if slots else None, None, extra)


def build_teacher_inputs(
    processing_class: Any,
    messages: Sequence[Sequence[Message]],
    hints: Sequence[str],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    images: Sequence[Sequence[Any]] | None = None,
    template: str = DEFAULT_TEACHER_TEMPLATE,
    include_image: bool = True,
    max_prompt_length: int | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    image_inputs: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
) -> TeacherInputs:
    """Teacher rows ``[prompt + hint] + response`` for N rollouts: the one teacher builder of both engines.

    Args:
        processing_class: a tokenizer with a chat template, or a multimodal processor
            (e.g. ``Qwen3VLProcessor``) whose tokenizer has one.
        messages: N conversations as the student saw them (the prompt only, no response).
        hints: N hint strings (r+ or r-).
        response_ids: (N, T) sampled response tokens, right-padded.
        response_mask: (N, T) 1 on response tokens, 0 on padding.
        images: N lists of PIL images referenced by the image items of each conversation;
            required for a conversation with image items when ``include_image`` is true.
        template: Jinja template with ``{{ prompt }}`` and ``{{ hint }}``.
        include_image: keep images in the teacher context (default) or drop them.
        max_prompt_length: raise if a teacher prompt is longer (in tokens, images included).
        chat_template_kwargs: extra chat-template variables, the ones the student prompt was rendered with.
        image_inputs: instead of ``images``, N already-processed image inputs (``pixel_values``, ``image_grid_thw``;
            ``None`` for a row without images), as verl keeps them with its rollouts: the teacher reuses the
            student's pixels and the placeholders are expanded per grid (:func:`teacher_prompt_ids`).
    """
    n = len(messages)
    if len(hints) != n:
        raise ValueError(f"hints has {len(hints)} entries but messages has {n}; give one hint per rollout")
    if response_ids.dim() != 2 or response_ids.shape[0] != n:
        raise ValueError(f"response_ids must have shape ({n}, T), got {tuple(response_ids.shape)}")
    if tuple(response_mask.shape) != tuple(response_ids.shape):
        raise ValueError(
            f"response_mask has shape {tuple(response_mask.shape)} but response_ids has {tuple(response_ids.shape)}"
        )
    if images is not None and len(images) != n:
        raise ValueError(f"images has {len(images)} entries but messages has {n}; give one list per rollout")
    if image_inputs is not None:
        if len(image_inputs) != n:
            raise ValueError(f"image_inputs has {len(image_inputs)} entries but messages has {n}; one per rollout")
        return _from_image_inputs(processing_class, messages, hints, response_ids, response_mask, image_inputs,
                                  template, include_image, max_prompt_length, chat_template_kwargs)
    tokenizer = tokenizer_of(processing_class)
    if getattr(tokenizer, "chat_template", None) is None and getattr(processing_class, "chat_template", None) is None:
        raise ValueError(
            "the tokenizer has no chat template; teacher contexts re-apply it. Load an instruct/chat model or set "
            "tokenizer.chat_template"
        )
    compiled = compile_template(template)
    prompts = [
        teacher_prompt_text(processing_class, m, h, compiled, include_image, chat_template_kwargs)
        for m, h in zip(messages, hints, strict=True)
    ]
    texts = [text for text, _ in prompts]
    rendered = [conv for _, conv in prompts]
    multimodal = _has_image_processor(processing_class)
    row_images: list[list[Any]] = []
    if multimodal and include_image:
        for i, conv in enumerate(rendered):
            wanted = sum(1 for m in conv if isinstance(m.get("content"), list) for it in m["content"] if _is_image(it))
            given = list(images[i]) if images is not None else []
            if wanted != len(given):
                raise ValueError(
                    f"row {i}: the conversation has {wanted} image item(s) but {len(given)} image(s) were given"
                )
            row_images.append(given)
    flat_images = [img for imgs in row_images for img in imgs]

    if multimodal:
        # one list of images per row, as TRL passes them (Gemma-3's processor pairs images with texts by row)
        encoded = processing_class(
            text=texts,
            images=(row_images if all(row_images) else flat_images) or None,
            padding=True,
            padding_side="left",
            return_tensors="pt",
        )
    else:
        encoded = tokenizer(texts, padding=True, padding_side="left", add_special_tokens=False, return_tensors="pt")
    prompt_ids, prompt_mask = encoded["input_ids"], encoded["attention_mask"]
    for row, length in enumerate(prompt_mask.sum(-1).tolist()):
        check_prompt_length(int(length), max_prompt_length, row, hints[row])
    response_ids = response_ids.to(prompt_ids.dtype)
    response_mask = response_mask.to(prompt_mask.dtype)
    mm_types = encoded.get("mm_token_type_ids")
    if mm_types is not None:
        mm_types = torch.cat([mm_types, torch.zeros_like(response_ids, dtype=mm_types.dtype)], dim=1)
    known = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    extra = {k: v for k, v in encoded.items() if k not in known and isinstance(v, torch.Tensor)}
    if "token_type_ids" in extra:  # per token, like mm_token_type_ids: the response part is text (0)
        types = extra["token_type_ids"]
        extra["token_type_ids"] = torch.cat([types, torch.zeros_like(response_ids, dtype=types.dtype)], dim=1)
    return TeacherInputs(
        input_ids=torch.cat([prompt_ids, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1),
        prompt_length=int(prompt_ids.shape[1]),
        response_ids=response_ids,
        response_mask=response_mask,
        num_images=[len(r) for r in row_images] if row_images else [0] * n,
        pixel_values=encoded.get("pixel_values"),
        image_grid_thw=encoded.get("image_grid_thw"),
        mm_token_type_ids=mm_types,
        extra=extra,
    )


def _from_image_inputs(
    processing_class: Any,
    messages: Sequence[Sequence[Message]],
    hints: Sequence[str],
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    image_inputs: Sequence[Mapping[str, torch.Tensor] | None],
    template: str,
    include_image: bool,
    max_prompt_length: int | None,
    chat_template_kwargs: Mapping[str, Any] | None,
) -> TeacherInputs:
    """:func:`build_teacher_inputs` from already-processed image inputs: one :func:`teacher_prompt_ids` per row,
    left-padded into the batch layout."""
    compiled = compile_template(template)
    rows = [
        teacher_prompt_ids(processing_class, messages[i], hints[i], compiled, include_image, chat_template_kwargs,
                           image_inputs[i], max_prompt_length, row=i)
        for i in range(len(messages))
    ]
    width = max(int(ids.numel()) for ids, _ in rows)
    pad = tokenizer_of(processing_class).pad_token_id or 0
    prompt_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    prompt_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, _) in enumerate(rows):
        prompt_ids[i, width - ids.numel():] = ids
        prompt_mask[i, width - ids.numel():] = 1
    used = [mm for _, mm in rows]
    grids = [mm["image_grid_thw"] for mm in used if mm]
    response_ids = response_ids.to(torch.long)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    mm_types = None
    token_id = image_token_id(processing_class)
    if grids and token_id is not None:
        mm_types = torch.cat([(prompt_ids == token_id).long() * prompt_mask, torch.zeros_like(response_ids)], dim=1)
    return TeacherInputs(
        input_ids=input_ids,
        attention_mask=torch.cat([prompt_mask, response_mask.to(torch.long)], dim=1),
        prompt_length=width,
        response_ids=response_ids,
        response_mask=response_mask.to(torch.long),
        num_images=[len(mm["image_grid_thw"]) if mm else 0 for mm in used],
        pixel_values=torch.cat([mm["pixel_values"] for mm in used if mm]) if grids else None,
        image_grid_thw=torch.cat(grids) if grids else None,
        mm_token_type_ids=mm_types,
    )


@torch.no_grad()
def teacher_logprobs(
    model: torch.nn.Module,
    inputs: TeacherInputs,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
) -> torch.Tensor:
    """Log-probs of the response tokens under the teacher context: (N, T), float32, no grad.

    ``temperature`` divides the logits, as the rollout sampler and the student log-prob pass
    do (use the rollout temperature so P_T and P_S are on the same scale). Masked response
    positions hold 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = inputs.input_ids.shape[0]
    size = n if not micro_batch_size else max(1, int(micro_batch_size))
    device = next(model.parameters()).device
    p, t = inputs.prompt_length, inputs.response_length
    chunks = []
    for start in range(0, n, size):
        rows = list(range(start, min(n, start + size)))
        part = inputs if len(rows) == n else inputs.select(rows)
        kwargs = {k: v.to(device) for k, v in part.model_kwargs().items()}
        logits = model(**kwargs).logits[:, p - 1 : p + t - 1].float() / temperature
        logps = torch.log_softmax(logits, dim=-1).gather(-1, part.response_ids.to(device).unsqueeze(-1)).squeeze(-1)
        chunks.append(logps * part.response_mask.to(device))
    return torch.cat(chunks, dim=0)


@torch.no_grad()
def teacher_topk_logprobs(
    model: torch.nn.Module,
    inputs: TeacherInputs,
    k: int,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher's top-k log-probs per response token (OPSD ``--top_k_loss``, SDPO ``topk``), from a plain forward.

    One forward per chunk of ``micro_batch_size`` rows, logits kept at the response positions only
    (``logits_to_keep = T + 1``), divided by ``temperature`` (the rollout temperature, as :func:`teacher_logprobs`),
    full-vocabulary ``log_softmax`` in float32, then ``topk``. The sampled tokens' log-probs come from the same
    softmax, so this call replaces :func:`teacher_logprobs` where a top-k loss needs the teacher.

    Returns:
        ``(values, indices, token_logps)``: ``values`` (N, T, k) float32 log-probs of the teacher's k most likely
        tokens, sorted descending; ``indices`` (N, T, k) int64 vocabulary ids; ``token_logps`` (N, T) float32
        log-probs of the response tokens, 0 at masked positions. ``values``/``indices`` at masked positions hold
        whatever the model predicts there (finite): callers mask them.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = inputs.input_ids.shape[0]
    size = n if not micro_batch_size else max(1, int(micro_batch_size))
    device = next(model.parameters()).device
    t = inputs.response_length
    values, indices, token_logps = [], [], []
    for start in range(0, n, size):
        rows = list(range(start, min(n, start + size)))
        part = inputs if len(rows) == n else inputs.select(rows)
        kwargs = {key: v.to(device) for key, v in part.model_kwargs().items()}
        logits = model(**kwargs, logits_to_keep=t + 1).logits[:, -(t + 1) : -1].float() / temperature
        vocab = logits.shape[-1]
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
            raise ValueError(f"k must be an int in [1, {vocab}] (the model's vocabulary), got {k!r}")
        log_probs = torch.log_softmax(logits, dim=-1)
        top = torch.topk(log_probs, k=k, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
        sampled = log_probs.gather(-1, part.response_ids.to(device).long().unsqueeze(-1)).squeeze(-1)
        token_logps.append(sampled * part.response_mask.to(device))
    return torch.cat(values), torch.cat(indices), torch.cat(token_logps)
