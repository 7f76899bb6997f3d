"""Shared pieces of the tests' tiny runs: padded response batches, a reward that splits every group, and the
settings of a one-step ``CEPOTrainer`` run on CPU.

Pure Python / torch; nothing here imports TRL (the settings are the keyword arguments of ``CEPOGRPOConfig``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cepo.testing.tokenizer import IM_END

__all__ = ["first_half_correct", "pad_responses", "tiny_run_settings"]


def pad_responses(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Each text tokenized (no special tokens) and closed with ``<|im_end|>``, right-padded with the pad token.

    Returns:
        ``(ids, mask, rows)``: (N, T) token ids, (N, T) 0/1 mask of the real tokens, and the unpadded id lists.
    """
    end = tokenizer.convert_tokens_to_ids(IM_END)
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] + [end] for text in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask, rows


def first_half_correct(completions: list[Any], **_: Any) -> list[float]:
    """Reward 1.0 for the first half of every group of 4 (by position), 0.0 for the rest: every group has
    successes and failures, so every row has A != 0."""
    return [1.0 if i % 4 < 2 else 0.0 for i in range(len(completions))]


def tiny_run_settings(output_dir: str | Path, method: str, **extra: Any) -> dict[str, Any]:
    """``CEPOGRPOConfig`` keyword arguments of a one-step CPU run (16 rows: 4 prompts x 4 rollouts of up to 16
    tokens, lr 1e-3, no checkpoints, a log row per step) for ``method``; ``extra`` overrides or adds keys."""
    settings: dict[str, Any] = {
        "output_dir": str(output_dir), "per_device_train_batch_size": 16, "num_generations": 4,
        "max_completion_length": 16, "max_steps": 1, "learning_rate": 1e-3, "report_to": "none", "use_cpu": True,
        "save_strategy": "no", "logging_steps": 1, "cepo_method": method,
    }
    return {**settings, **extra}
