"""Run a TRL training job: model + data + ``CEPOGRPOConfig`` -> run directory.

A run directory holds ``config.json`` (every setting used), ``metrics.jsonl`` (one row per logged
step: every optimizer step with ``logging_steps=1``, as ``cepo smoke`` and ``cepo train`` set it),
``checkpoint-*`` folders from TRL, and ``final/`` (the adapter or model and its processor). Each
logged step also prints one line of metrics beside TRL's progress bar.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from cepo.integrations.trl.config import CEPOGRPOConfig
from cepo.integrations.trl.rewards import make_math_reward
from cepo.integrations.trl.trainer import CEPOTrainer

LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
"""LoRA on every linear layer of the language model; the vision tower is not adapted (as the authors do)."""


class MetricsFileCallback(TrainerCallback):
    """Appends one JSON row per logged step and prints a compact metrics line."""

    def __init__(self, path: Path, echo: bool = True) -> None:
        self.path = Path(path)
        self.echo = echo
        self._last = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Keep only the rows up to the step training starts from (0 for a new run, the checkpoint's on resume),
        so a resumed run neither duplicates nor leaves stale rows."""
        if not state.is_world_process_zero or not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= state.global_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "reward" not in logs or not state.is_world_process_zero:
            return
        now = time.perf_counter()
        row = {"step": state.global_step, "wall_seconds": round(now - self._last, 4), **logs}
        self._last = now
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.echo:
            print(
                f"step {state.global_step:>4} | reward {logs.get('reward', 0):.3f} | lambda "
                f"{logs.get('cepo/lambda', 0):.3f} | delta+ {logs.get('cepo/delta_pos_frac', 0):.3f} "
                f"delta- {logs.get('cepo/delta_neg_frac', 0):.3f} | clip {logs.get('cepo/clip_rate', 0):.3f} | "
                f"|A| {logs.get('cepo/adv_abs_mean_before', 0):.3f}->{logs.get('cepo/adv_abs_mean_after', 0):.3f} | "
                f"step {row['wall_seconds']:.2f}s",
                flush=True,
            )


class QuietProgressCallback(ProgressCallback):
    """TRL's progress bar without the raw log dict after every step (our one-line summary replaces it)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


def lora_config(rank: int = 16, alpha: int = 32) -> Any:
    """The paper's LoRA (rank 16, alpha 32) on the language model's linear layers."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")


def train(
    model: Any,
    processing_class: Any,
    train_dataset: Any,
    args: CEPOGRPOConfig,
    peft_config: Any = None,
    resume_from_checkpoint: str | bool | None = None,
    echo: bool = True,
    overwrite: bool = False,
) -> CEPOTrainer:
    """Train with ``CEPOTrainer`` and write the run directory at ``args.output_dir``.

    A run directory that already holds checkpoints is never silently overwritten: pass
    ``resume_from_checkpoint`` to continue it, ``overwrite=True`` to delete its checkpoints, metrics and
    ``final/`` first, or choose another ``output_dir``.
    """
    run_dir = Path(args.output_dir)
    existing = sorted(run_dir.glob("checkpoint-*")) if run_dir.exists() else []
    if existing and not resume_from_checkpoint:
        if not overwrite:
            raise ValueError(
                f"{run_dir} already holds checkpoints ({', '.join(p.name for p in existing[:3])}"
                f"{', ...' if len(existing) > 3 else ''}); resume it (--resume), start elsewhere (--output-dir), or "
                "delete them (--overwrite)"
            )
        for path in [*existing, run_dir / "final"]:
            shutil.rmtree(path, ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if "answer" not in train_dataset.column_names:
        raise ValueError(
            f"train dataset has no 'answer' column (columns: {train_dataset.column_names}); every row needs the "
            "verifiable final answer (for Geo3k use cepo.data.to_conversational)"
        )
    if "prompt" not in train_dataset.column_names:
        raise ValueError(
            f"train dataset has no 'prompt' column (columns: {train_dataset.column_names}); "
            "use cepo.data.to_conversational to build one"
        )
    cepo = args.cepo_config()
    (run_dir / "config.json").write_text(json.dumps(json.loads(args.to_json_string()), indent=2, sort_keys=True))
    reward = make_math_reward(cepo.reward.accuracy_weight, cepo.reward.format_weight)
    trainer = CEPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        callbacks=[MetricsFileCallback(run_dir / "metrics.jsonl", echo=echo)],
    )
    if echo and trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    final = run_dir / "final"
    trainer.save_model(str(final))
    processing_class.save_pretrained(str(final))
    return trainer
