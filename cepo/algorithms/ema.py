"""EMA teacher weights (SDPO ``teacher_regularization=ema``; OPSD ``--use_ema_teacher``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def _pairs(
    teacher_params: Iterable[torch.Tensor] | Mapping[str, torch.Tensor],
    student_params: Iterable[torch.Tensor] | Mapping[str, torch.Tensor],
) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    if isinstance(teacher_params, Mapping) != isinstance(student_params, Mapping):
        raise ValueError("teacher_params and student_params must both be mappings (name -> tensor) or both sequences")
    if isinstance(teacher_params, Mapping):
        missing = sorted(set(teacher_params) ^ set(student_params))
        if missing:
            raise ValueError(f"teacher_params and student_params must have the same names; differing: {missing[:8]}")
        return [(str(k), teacher_params[k], student_params[k]) for k in teacher_params]
    teacher, student = list(teacher_params), list(student_params)
    if len(teacher) != len(student):
        raise ValueError(
            f"teacher_params has {len(teacher)} tensors but student_params has {len(student)}; pass matching lists"
        )
    return [(f"#{i}", t, s) for i, (t, s) in enumerate(zip(teacher, student, strict=True))]


def ema_update_(
    teacher_params: Iterable[torch.Tensor] | Mapping[str, torch.Tensor],
    student_params: Iterable[torch.Tensor] | Mapping[str, torch.Tensor],
    rate: float,
) -> None:
    """In place, under ``no_grad``: ``θ_T ← (1 - rate)·θ_T + rate·θ`` for every pair of tensors.

    SDPO's ``teacher_update_rate = 0.05`` is ``rate = 0.05``; OPSD's ``ema_decay = 0.999`` is
    ``rate = 0.001``. ``rate = 0`` leaves the teacher unchanged, ``rate = 1`` copies the student (both
    exactly). Under LoRA pass the adapter tensors only (an EMA of the adapter, no second full model).

    Args:
        teacher_params: the teacher's tensors (parameters, or a name -> tensor mapping), updated in place.
        student_params: the student's tensors, in the same order (or with the same names) and shapes;
            cast to each teacher tensor's dtype and device.
        rate: the update rate in [0, 1] (1 - EMA decay).
    """
    rate = float(rate)
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"rate must be in [0, 1] (1 - EMA decay; SDPO 0.05, OPSD 0.001), got {rate}")
    pairs = _pairs(teacher_params, student_params)
    for name, teacher, student in pairs:
        if not isinstance(teacher, torch.Tensor) or not isinstance(student, torch.Tensor):
            raise TypeError(f"teacher_params and student_params must hold tensors; entry {name} does not")
        if tuple(teacher.shape) != tuple(student.shape):
            raise ValueError(
                f"teacher_params entry {name} has shape {tuple(teacher.shape)} but the student's has "
                f"{tuple(student.shape)}; the teacher must mirror the student"
            )
        if not teacher.is_floating_point():
            raise ValueError(f"teacher_params entry {name} has dtype {teacher.dtype}; an EMA needs floating point")
    with torch.no_grad():
        for _, teacher, student in pairs:
            source = student.detach().to(device=teacher.device, dtype=teacher.dtype)
            if rate == 1.0:
                teacher.copy_(source)
            elif rate > 0.0:
                teacher.lerp_(source, rate)  # teacher + rate·(student - teacher)
