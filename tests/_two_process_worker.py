"""One rank of the 2-process TRL test (``tests/test_trl_multiprocess.py``), run by ``accelerate launch``.

Usage: ``accelerate launch --multi_gpu --num_processes 2 tests/_two_process_worker.py MODEL_DIR OUT_DIR`` (on a
CPU-only machine: ``use_cpu=True`` makes the two processes a gloo group).

Trains CEPO for one step on a group of 4 rollouts that spans both processes (2 rows each) and saves what
rank r saw in its first generation round to ``OUT_DIR/rank{r}.pt``. The reward is rank-dependent on purpose:
rank 0's rollouts are correct (1.0); on rank 1 the first rollout is rejected (0.1) and the second unscored
(``None``). So r- for rank 0's rows must come from rank 1's rollout, and the two ranks have different numbers
of teacher rows (rank 0: 2 x r+ and 2 x r-; rank 1: 1 x r+ and 1 x r-), which the trainer must pad.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoModelForImageTextToText, AutoProcessor

from cepo.data import to_conversational
from cepo.integrations.trl import CEPOGRPOConfig, CEPOTrainer
from cepo.integrations.trl.rewards import completion_text
from cepo.testing import make_geo3k_like


def rank_reward(completions: list[Any], answer: list[str], **_: Any) -> list[float | None]:
    if dist.get_rank() == 0:
        return [1.0] * len(completions)
    return [0.1 if i == 0 else None for i in range(len(completions))]


class DumpingTrainer(CEPOTrainer):
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        if not getattr(self, "dump", None):
            rollouts = self._cepo_rollouts
            self.dump = {
                "rank": self.accelerator.process_index,
                "prompts": rollouts["prompts"],
                "images": [list(x["images"]) for x in inputs],
                "answers": [x["answer"] for x in inputs],
                "completions": [completion_text(c) for c in rollouts["completions"]],
                "completion_ids": output["completion_ids"].cpu(),
                "completion_mask": output["completion_mask"].cpu(),
                "advantages": output["advantages"].cpu(),
                "rewards_per_func": rollouts["rewards_per_func"].cpu(),
                "teacher_calls": list(self.teacher_calls),
                "forward_log": list(self.forward_log),
            }
        return output


def main(model_dir: str, out_dir: str) -> None:
    args = CEPOGRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=2, num_generations=4, max_completion_length=16,
        max_steps=1, learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no", logging_steps=1,
        cepo_method="cepo", seed=0, disable_tqdm=True, bf16=False,
    )
    trainer = DumpingTrainer(
        model=AutoModelForImageTextToText.from_pretrained(model_dir), reward_funcs=rank_reward, args=args,
        train_dataset=to_conversational(make_geo3k_like(8)), processing_class=AutoProcessor.from_pretrained(model_dir),
    )
    trainer.train()
    torch.save(trainer.dump, f"{out_dir}/rank{trainer.accelerator.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
