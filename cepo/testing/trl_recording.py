"""A ``CEPOTrainer`` mix-in for the TRL trainer tests: it records every generation round and the EMA teacher's
bookkeeping (the trained adapter before each EMA update and the EMA adapter after it), so a test can rebuild the
teacher independently and compare.

Use it before ``CEPOTrainer`` in the bases::

    class Recording(RecordingMixin, CEPOTrainer): ...

Importing this module imports only ``torch``; TRL and the trainer are imported when a recorded method runs.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["RecordingMixin", "clone", "lora_tensors"]


def clone(value: Any) -> Any:
    """A detached copy of a tensor; any other value as it is."""
    return value.detach().clone() if isinstance(value, torch.Tensor) else value


def lora_tensors(model: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Copies of the LoRA tensors of ``adapter``, keyed by their name with the adapter replaced by ``default`` (so the
    trained adapter's and the EMA adapter's tensors share keys)."""
    return {n.replace(f".{adapter}.", ".default."): p.detach().clone() for n, p in model.named_parameters()
            if "lora_" in n and f".{adapter}." in n}


class RecordingMixin:
    """Records, on a ``CEPOTrainer`` subclass:

    * ``generated``: one dict per generation round: ``output`` (the generation output, tensors copied), ``prompts``,
      ``images``, ``answers``, ``texts`` (the completions' text) and ``rewards`` (summed over the reward functions);
    * ``student_history``: the trained (``default``) LoRA adapter when the EMA teacher is created, then before every
      EMA update (so entry k is the adapter after k optimizer steps of this run);
    * ``ema_history``: the EMA adapter after every update (keys as in ``student_history``).
    """

    generated: list[dict[str, Any]]
    student_history: list[dict[str, torch.Tensor]]
    ema_history: list[dict[str, torch.Tensor]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.generated, self.student_history, self.ema_history = [], [], []
        super().__init__(*args, **kwargs)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        from cepo.integrations.trl.rewards import completion_text

        output = super()._generate_and_score_completions(inputs)  # type: ignore[misc]
        rollouts = self._cepo_rollouts  # type: ignore[attr-defined]
        self.generated.append({
            "output": {k: clone(v) for k, v in output.items()},
            "prompts": rollouts["prompts"], "images": [list(x["images"]) for x in inputs],
            "answers": [x["answer"] for x in inputs],
            "texts": [completion_text(c) for c in rollouts["completions"]],
            "rewards": rollouts["rewards_per_func"].sum(dim=1),
        })
        return output

    def _init_ema_teacher(self) -> None:
        super()._init_ema_teacher()  # type: ignore[misc]
        self.student_history = [lora_tensors(self.model, "default")]  # type: ignore[attr-defined]

    def update_ema_teacher(self) -> None:
        from cepo.integrations.trl.trainer import EMA_ADAPTER

        self.student_history.append(lora_tensors(self.model, "default"))  # type: ignore[attr-defined]
        super().update_ema_teacher()  # type: ignore[misc]
        self.ema_history.append(lora_tensors(self.model, EMA_ADAPTER))  # type: ignore[attr-defined]
