"""The micro-batch teacher of OPSD / SDPO on TRL (``cepo.distill.mode=full``, or ``topk`` with ``support=student``).

OPSD's full-vocabulary generalized JSD and SDPO's student-support top-k need the teacher's whole distribution at
every response token, in the step that computes the loss (``../shared/paper/baselines.md`` §3, §4a). A (B, T, V)
teacher distribution cannot be carried through TRL's generation buffer (Qwen3-VL: V = 151,936), so the teacher pass
at generation time only *builds* the teacher rows and hands their prompt tokens to the loss through TRL's output dict
(split and shuffled with the rest, first dimension B); each micro-batch then runs one teacher forward on
``[teacher prompt | completion]`` under ``no_grad`` and the divergence is computed chunk by chunk over T from the two
forwards' logits (:func:`cepo.algorithms.logits_distillation_loss`).

The teacher rows reuse the micro-batch's own image inputs: with ``cepo.teacher_sees_image`` the teacher prompt holds
the same images as the student's (same processor, same placeholders), so ``pixel_values`` and friends are the
micro-batch's; only the per-token tensors (``mm_token_type_ids``, ``token_type_ids``) are the teacher's, carried as
``teacher_<key>``. A row without a teacher (SDPO: no peer success) carries its own student prompt: its divergence is
0 and it is outside the loss mask.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import is_peft_model

from cepo.teacher import TeacherInputs

PER_TOKEN_KEYS = ("mm_token_type_ids", "token_type_ids")
"""Model inputs with one entry per token (B, L): the teacher rows carry their own (``teacher_<key>``)."""

LOSS_TEACHER_KEYS = ("teacher_prompt_ids", "teacher_prompt_mask", "distill_mask", "distill_num_items",
                     "distill_num_rows")
"""What the teacher pass adds to TRL's output dict when the teacher runs in the loss: (B, P_T) left-padded teacher
prompt ids and mask, the (B, T) loss mask (response tokens of rows with a teacher) and its token count over the whole
generation batch (plus ``teacher_<key>`` (B, P_T) for each :data:`PER_TOKEN_KEYS` the model takes)."""


def is_pure_lora(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a PEFT LoRA model whose only trainable parameters are LoRA tensors (then the initial
    policy is the model with the adapter disabled, and an EMA teacher can be a second adapter)."""
    if not is_peft_model(model):
        return False
    peft_type = str(getattr(model.peft_config.get(model.active_adapter), "peft_type", "")).split(".")[-1]
    return peft_type == "LORA" and not any(p.requires_grad and "lora_" not in n for n, p in model.named_parameters())


def _left_pad(rows: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype, device=rows[0].device)
    for i, row in enumerate(rows):
        if row.numel():
            out[i, width - row.numel():] = row
    return out


def carry_teacher_prompts(
    output: dict[str, Any], teacher: TeacherInputs | None, rows: list[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """The teacher prompts of the local batch as (B, P_T) tensors for TRL's output dict (:data:`LOSS_TEACHER_KEYS`).

    Args:
        output: TRL's output dict (``prompt_ids`` / ``prompt_mask`` (B, P), left-padded; per-token keys (B, P + T)).
        teacher: the built teacher rows (N rows, :func:`cepo.teacher.build_teacher_inputs`), or None when no row of
            this process has a teacher.
        rows: for each teacher row j, the local row it belongs to (``len(rows) <= N``; extra teacher rows, the
            cross-process padding, are dropped).
        pad_id: the pad token of the left padding.

    Returns:
        ``teacher_prompt_ids``, ``teacher_prompt_mask`` and ``teacher_<key>`` of each per-token key in ``output``,
        each (B, P_T) with P_T the widest unpadded prompt; rows without a teacher hold their student prompt.
    """
    prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
    p = prompt_ids.shape[1]
    source = {row: j for j, row in enumerate(rows)}
    teacher_p = teacher.prompt_length if teacher is not None else 0
    keys = [k for k in PER_TOKEN_KEYS if output.get(k) is not None]
    ids: list[torch.Tensor] = []
    per_token: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for row in range(prompt_ids.shape[0]):
        if row in source:
            assert teacher is not None
            j = source[row]
            keep = teacher.attention_mask[j, :teacher_p].bool().cpu()
            ids.append(teacher.input_ids[j, :teacher_p][keep].to(prompt_ids.device))
            extra = {"mm_token_type_ids": teacher.mm_token_type_ids, **teacher.extra}
            for k in keys:
                if extra.get(k) is None:
                    raise ValueError(f"the teacher rows have no {k} but the student's have; the processor must give it")
                per_token[k].append(extra[k][j, :teacher_p][keep].to(output[k].device, output[k].dtype))
        else:
            keep = prompt_mask[row].bool()
            ids.append(prompt_ids[row][keep])
            for k in keys:
                per_token[k].append(output[k][row, :p][keep])
    width = max(1, max(int(x.numel()) for x in ids))
    carried = {"teacher_prompt_ids": _left_pad(ids, width, pad_id),
               "teacher_prompt_mask": _left_pad([torch.ones_like(x) for x in ids], width, 0).to(prompt_mask.dtype)}
    for k in keys:
        carried[f"teacher_{k}"] = _left_pad(per_token[k], width, 0)
    return carried


def teacher_forward_kwargs(inputs: dict[str, Any], forward_keys: tuple[str, ...]) -> dict[str, Any]:
    """``model(**kwargs)`` of a micro-batch's teacher rows: ``[teacher prompt | completion]``, the micro-batch's image
    inputs, and the teacher's per-token inputs extended with zeros over the completion (as TRL does the student's)."""
    completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
    kwargs: dict[str, Any] = {
        "input_ids": torch.cat([inputs["teacher_prompt_ids"], completion_ids], dim=1),
        "attention_mask": torch.cat([inputs["teacher_prompt_mask"], completion_mask], dim=1),
    }
    for key in forward_keys:
        if inputs.get(key) is None:
            continue
        if key in PER_TOKEN_KEYS:
            carried = inputs[f"teacher_{key}"]
            kwargs[key] = torch.cat([carried, carried.new_zeros(completion_ids.shape)], dim=1)
        else:
            kwargs[key] = inputs[key]
    return kwargs
