"""CEPO through the Python API on the TRL engine, with the offline tiny Qwen3-VL (runs on a laptop CPU).

Swap the tiny model and the Geo3k-shaped data for a real checkpoint and `hiyouga/geometry3k`
(`datasets.load_dataset("hiyouga/geometry3k", split="train")`) to train for real.

    python examples/train_trl_tiny.py [output_dir]
"""

from __future__ import annotations

import sys
from pathlib import Path

from transformers import AutoModelForImageTextToText, AutoProcessor

from cepo.data import to_conversational
from cepo.integrations.trl import CEPOGRPOConfig
from cepo.integrations.trl.run import lora_config, train
from cepo.smoke import prepare_smoke_model
from cepo.testing import make_geo3k_like


def main(output_dir: str = "runs/example") -> None:
    model_dir = prepare_smoke_model(Path(output_dir) / "base-model")  # tiny Qwen3-VL, warm-started on the format
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    dataset = to_conversational(make_geo3k_like(32))  # columns: prompt, images, answer
    args = CEPOGRPOConfig(
        output_dir=output_dir,
        cepo_method="cepo",  # grpo | rlsd | cepo
        cepo_lam0=0.5,
        cepo_warmup_steps=25,
        cepo_eps_w=0.5,
        num_generations=4,
        per_device_train_batch_size=16,
        max_completion_length=16,
        max_steps=2,
        learning_rate=2e-3,
        use_cpu=True,
        bf16=False,  # TRL defaults to bf16 autocast even on CPU
        report_to="none",
        save_strategy="no",
        logging_steps=1,  # one metrics.jsonl row and one printed line per step
    )
    trainer = train(model, processor, dataset, args, peft_config=lora_config(rank=16, alpha=32))
    print(f"done: {trainer.state.global_step} steps, run directory {output_dir}")


if __name__ == "__main__":
    main(*sys.argv[1:])
