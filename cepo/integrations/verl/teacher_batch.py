"""Teacher rows for verl's actor workers: ``[prompt + hint] + response`` in verl's own batch layout.

CEPO scores every sampled response under two extra contexts (paper Eq. 2): ``P_T+`` (hint r+, the
ground-truth answer) and ``P_T-`` (hint r-, the answer of the lowest-reward rejected rollout). The
teacher weights are the actor's, so the rows go through the actor's own ``compute_log_prob`` (FSDP
sharding, micro-batching and remove-padding as for the old log-probs). This module builds them.

How a teacher row is built from a student row (the fields verl's agent loop stores per sample):

* the prompt text is the student's ``raw_prompt`` conversation with the hint put into its last user
  turn by ``cepo.teacher.render_teacher_messages`` (Appendix B template), re-rendered with the chat
  template;
* images: verl does not keep raw images with the rollouts, only the processed ``multi_modal_inputs``
  (``pixel_values``, ``image_grid_thw``). The teacher reuses them unchanged (it sees exactly the
  student's pixels): the prompt ids come from ``cepo.teacher.teacher_prompt_ids``, the same builder the
  TRL engine's teacher uses (``cepo.teacher.build_teacher_inputs(..., image_inputs=...)``);
* ``position_ids``: for models with M-RoPE, shape ``(4, L)``: row 0 = ``arange`` over the tokens
  (text positions), rows 1-3 from ``get_rope_index(input_ids, mm_token_type_ids, image_grid_thw,
  attention_mask)`` (verl's agent-loop convention); else ``arange(L)``;
* the response tokens are the student's, unchanged: log-probs line up token for token with
  ``old_log_probs``.

Length policy: the response is never truncated. A teacher prompt longer than
``cepo.teacher_max_prompt_length`` tokens (images included) fails with the row index and that key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cepo.teacher import (
    DEFAULT_TEACHER_TEMPLATE,
    TeacherLengthError,  # noqa: F401  (raised by teacher_prompt_ids; re-exported for callers)
    compile_template,
    image_token_id,
    teacher_prompt_ids,
)

RopeIndexFn = Callable[..., tuple[torch.Tensor, torch.Tensor]]
"""``get_rope_index(input_ids, mm_token_type_ids=..., image_grid_thw=..., attention_mask=...)`` ->
``(positions (3, B, L), deltas)``, e.g. verl's ``hf_processor(path).get_rope_index``."""


@dataclass
class TeacherRow:
    """One teacher sequence: ``prompt_ids + response_ids`` with its positions and image inputs."""

    prompt_ids: torch.Tensor  # (P_i,)
    response_ids: torch.Tensor  # (R_i,) valid response tokens only
    position_ids: torch.Tensor  # (4, P_i + R_i) with M-RoPE, else (P_i + R_i,)
    multi_modal_inputs: dict[str, torch.Tensor]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids])


def build_teacher_row(
    processing_class: Any,
    messages: Sequence[Mapping[str, Any]],
    hint: str,
    response_ids: torch.Tensor,
    multi_modal_inputs: Mapping[str, torch.Tensor] | None = None,
    template: str = DEFAULT_TEACHER_TEMPLATE,
    include_image: bool = True,
    rope_index_fn: RopeIndexFn | None = None,
    max_prompt_length: int | None = None,
    row: int = 0,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> TeacherRow:
    """Build one teacher row (see the module docstring).

    Args:
        processing_class: the actor's processor (Qwen-VL) or tokenizer, with a chat template.
        messages: the student conversation (verl's ``raw_prompt``; ``data.return_raw_chat=True``).
        hint: r+ or r- text.
        response_ids: (R,) valid response tokens (no padding).
        multi_modal_inputs: the rollout's processed image inputs (``pixel_values``, ``image_grid_thw``).
        template: teacher template with ``{{ prompt }}`` and ``{{ hint }}`` (``cepo.teacher_template``).
        include_image: keep the figure (``cepo.teacher_sees_image``).
        rope_index_fn: M-RoPE position function for Qwen-VL models, ``None`` for 1-D positions.
        max_prompt_length: ``cepo.teacher_max_prompt_length``.
        row: row index, for error messages.
        chat_template_kwargs: verl's ``data.apply_chat_template_kwargs`` (the student prompt's, e.g.
            ``enable_thinking``), so the teacher prompt differs from the student's only by the hint.
    """
    prompt_ids, mm = teacher_prompt_ids(processing_class, list(messages), hint, compile_template(template),
                                        include_image, chat_template_kwargs, multi_modal_inputs, max_prompt_length, row)
    grid = mm.get("image_grid_thw")
    response_ids = torch.as_tensor(response_ids, dtype=torch.long).flatten()
    input_ids = torch.cat([prompt_ids, response_ids])
    length = input_ids.numel()
    if rope_index_fn is None:
        position_ids = torch.arange(length, dtype=torch.long)
    else:
        mm_types = torch.zeros_like(input_ids)
        image_id = image_token_id(processing_class)
        if image_id is not None and grid is not None:
            mm_types[input_ids == image_id] = 1
        vision, _ = rope_index_fn(
            input_ids.unsqueeze(0),
            mm_token_type_ids=mm_types.unsqueeze(0),
            image_grid_thw=grid,
            attention_mask=torch.ones_like(input_ids).unsqueeze(0),
        )
        position_ids = torch.cat([torch.arange(length, dtype=torch.long).unsqueeze(0), vision[:, 0].long()], dim=0)
    return TeacherRow(prompt_ids=prompt_ids, response_ids=response_ids, position_ids=position_ids,
                      multi_modal_inputs=mm)


def build_teacher_rows(
    processing_class: Any,
    messages: Sequence[Sequence[Mapping[str, Any]]],
    hints: Sequence[str],
    responses: Sequence[torch.Tensor],
    multi_modal_inputs: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    template: str = DEFAULT_TEACHER_TEMPLATE,
    include_image: bool = True,
    rope_index_fn: RopeIndexFn | None = None,
    max_prompt_length: int | None = None,
    row_ids: Sequence[int] | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[TeacherRow]:
    """:func:`build_teacher_row` for N rows; ``row_ids`` are the student row indices used in errors."""
    n = len(messages)
    for name, seq in (("hints", hints), ("responses", responses)):
        if len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries but messages has {n}; give one per row")
    mm = multi_modal_inputs if multi_modal_inputs is not None else [None] * n
    ids = list(row_ids) if row_ids is not None else list(range(n))
    return [
        build_teacher_row(processing_class, messages[i], hints[i], responses[i], mm[i], template, include_image,
                          rope_index_fn, max_prompt_length, row=ids[i], chat_template_kwargs=chat_template_kwargs)
        for i in range(n)
    ]


def pack_teacher_dataproto(rows: Sequence[TeacherRow], pad_token_id: int, response_length: int | None = None) -> Any:
    """Pack rows into a padded ``verl.DataProto`` in the layout of verl's rollout batches.

    ``prompts`` left-padded to the longest teacher prompt, ``responses`` right-padded to
    ``response_length`` (default: the longest response), ``input_ids = prompts ++ responses``,
    ``attention_mask``, ``response_mask``, ``position_ids`` ((B, 4, L) with M-RoPE, else (B, L); 0 on
    padding) and ``multi_modal_inputs`` (object array of dicts). This is the input of verl's
    ``left_right_2_no_padding`` (the worker's log-prob path).
    """
    from tensordict import TensorDict
    from verl import DataProto

    if not rows:
        raise ValueError("no teacher rows to pack")
    prompt_len = max(int(r.prompt_ids.numel()) for r in rows)
    resp_len = max(int(r.response_ids.numel()) for r in rows)
    if response_length is not None:
        if response_length < resp_len:
            raise ValueError(f"response_length={response_length} is shorter than the longest response ({resp_len})")
        resp_len = response_length
    n, total = len(rows), prompt_len + resp_len
    mrope = rows[0].position_ids.dim() == 2
    prompts = torch.full((n, prompt_len), pad_token_id, dtype=torch.long)
    responses = torch.full((n, resp_len), pad_token_id, dtype=torch.long)
    attention = torch.zeros((n, total), dtype=torch.long)
    response_mask = torch.zeros((n, resp_len), dtype=torch.long)
    positions = torch.zeros((n, 4, total) if mrope else (n, total), dtype=torch.long)
    for i, r in enumerate(rows):
        p, q = int(r.prompt_ids.numel()), int(r.response_ids.numel())
        prompts[i, prompt_len - p :] = r.prompt_ids
        responses[i, :q] = r.response_ids
        attention[i, prompt_len - p : prompt_len + q] = 1
        response_mask[i, :q] = 1
        positions[i, ..., prompt_len - p : prompt_len + q] = r.position_ids
    batch = TensorDict(
        {
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention,
            "response_mask": response_mask,
            "position_ids": positions,
        },
        batch_size=[n],
    )
    mm = np.empty(n, dtype=object)
    mm[:] = [dict(r.multi_modal_inputs) for r in rows]
    return DataProto(batch=batch, non_tensor_batch={"multi_modal_inputs": mm})


def nested_row_fields(row: TeacherRow) -> dict[str, Any]:
    """The per-sample fields verl's agent loop writes to TransferQueue, for one teacher row.

    Same names and shapes as a rollout sample (1-D ``prompts``/``responses``/``response_mask``/
    ``input_ids``, ``position_ids`` (4, L) or (L,), ``multi_modal_inputs``), so the actor worker reads a
    teacher row exactly as it reads a student row.
    """
    response_mask = torch.ones_like(row.response_ids)
    return {
        "prompts": row.prompt_ids,
        "responses": row.response_ids,
        "response_mask": response_mask,
        "loss_mask": response_mask,
        "input_ids": row.input_ids,
        "attention_mask": torch.ones_like(row.input_ids),
        "position_ids": row.position_ids,
        "multi_modal_inputs": dict(row.multi_modal_inputs),
    }
