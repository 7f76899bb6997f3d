"""Run a TRL training job: model + data + ``CEPOGRPOConfig`` -> run directory.

A run directory holds ``config.json`` (every setting used), ``metrics.jsonl`` (one row per logged
step: every optimizer step with ``logging_steps=1``, as ``cepo smoke`` and ``cepo train`` set it),
``checkpoint-*`` folders from TRL, and ``final/`` (the adapter or model and its processor). Each
logged step also prints one line of metrics above TRL's progress bar (``tqdm.write``).

Checkpoints and ``final/`` are written to a ``tmp-*`` directory and renamed when complete
(``cepo.integrations.trl.checkpoints``). Resuming picks the newest *complete* checkpoint, saying which newer
ones it skipped and why. A finished run cannot be extended (``--steps 10 --resume`` after 8 steps): its
learning-rate schedule has ended, and a longer one would restart part-way up; resuming an unfinished run with
another step count continues on a schedule laid out for the new count, with a warning. Ctrl-C raises
:class:`TrainingInterrupted`, which names the last complete checkpoint.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from cepo.algorithms.credit import CONSPO_NEG_PROB_METRIC, METHODS
from cepo.algorithms.metrics import logged_metrics
from cepo.integrations.trl.checkpoints import (
    STAGING_PREFIX,
    checkpoint_problems,
    find_resumable_checkpoint,
    list_checkpoints,
    publish_directory,
    remove_staging,
)
from cepo.integrations.trl.config import CEPOGRPOConfig
from cepo.integrations.trl.data import check_dataset_size
from cepo.integrations.trl.model_card import fix_model_card
from cepo.integrations.trl.rewards import make_math_reward
from cepo.integrations.trl.trainer import CEPOTrainer
from cepo.output_paths import DiskFull, disk_full

SCHEDULES_WITHOUT_END = ("constant", "constant_with_warmup", "reduce_lr_on_plateau")
"""Learning-rate schedules that do not depend on ``max_steps``: a run with one of them may be resumed with
another step count."""


@dataclass(frozen=True)
class OptionNames:
    """How the caller spells each option in error messages (``cepo smoke``, ``cepo train``, the Python API)."""

    resume: str = "resume_from_checkpoint=True"
    overwrite: str = "overwrite=True"
    output_dir: str = "another output_dir"
    steps: str = "max_steps={}"
    batch: str = "per_device_train_batch_size (prompts per step x num_generations)"
    output_option: str = "output_dir"
    """The setting that names the run directory, in messages about the directory itself."""
    optimizer_steps_per_step: int = 1
    """``steps`` counts this many optimizer steps each (``cepo train``: one training step = one generation
    round, which may take several optimizer steps)."""

    def steps_for(self, max_steps: int) -> str:
        """``steps`` spelled for ``max_steps`` optimizer steps."""
        return self.steps.format(max(1, max_steps // max(1, self.optimizer_steps_per_step)))


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: ``run_dir``, the step reached, and ``checkpoint``, the last complete one
    (``None`` if none was saved yet)."""

    def __init__(self, run_dir: Path, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"training interrupted at step {step}; last checkpoint: {checkpoint}")
        self.run_dir, self.step, self.checkpoint = run_dir, step, checkpoint

LORA_TARGETS = (
    r"(.*language_model.*|model\.layers\.\d+\.(self_attn|mlp))"
    r"\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
"""LoRA on every linear layer of the language model: a VLM's ``language_model`` or a text model's decoder layers
(``model.layers.N``); the vision tower is not adapted (as the authors do)."""


class MetricsFileCallback(TrainerCallback):
    """Appends one JSON row per logged step and prints a compact metrics line."""

    def __init__(self, path: Path, echo: bool = True, method: str | None = None) -> None:
        self.path = Path(path)
        self.echo = echo
        self.method = method
        """The run's method: metrics it does not have (λ for GRPO, OPSD, SDPO, ConSPO) are left out."""
        self._last = time.perf_counter()

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Keep only the rows up to the step training starts from (0 for a new run, the checkpoint's on resume),
        so a resumed run neither duplicates nor leaves stale rows. For ConSPO, say once what its step line shows
        instead of the loss."""
        if not state.is_world_process_zero:
            return
        if self.echo and _shows_conspo_metric(self.method):
            from tqdm.auto import tqdm

            tqdm.write(CONSPO_NOTE, file=sys.stdout)
            sys.stdout.flush()
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line).get("step", 0) <= state.global_step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        """One row per optimizer step (every step TRL logs a loss for). Rollout metrics (reward, lambda, the credit
        metrics) are in the rows of the steps that generated: with several optimizer steps per generation round the
        other steps carry the loss and learning rate only."""
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        now = time.perf_counter()
        if self.method is not None:
            logs = logged_metrics(self.method, logs)
        row = {"step": state.global_step, "wall_seconds": round(now - self._last, 4), **logs}
        self._last = now
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.echo:
            from tqdm.auto import tqdm

            # tqdm.write clears the progress bar, prints the line, and redraws the bar below it
            tqdm.write(step_line(row, self.method), file=sys.stdout)
            sys.stdout.flush()


STEP_LINE_FIELDS = (
    ("reward", "reward", "{:.3f}"),
    ("cepo/lambda", "lambda", "{:.3f}"),
    ("cepo/delta_pos_frac", "delta+", "{:.3f}"),
    ("cepo/delta_neg_frac", "delta-", "{:.3f}"),
    ("cepo/clip_rate", "clip", "{:.3f}"),
    ("cepo/has_teacher_frac", "teacher rows", "{:.2f}"),
    ("cepo/token_adv_abs_mean", "|A_t|", "{:.3f}"),
    (f"cepo/{CONSPO_NEG_PROB_METRIC}", "1-P+", "{:.4f}"),
    ("loss", "loss", "{:.4f}"),
)
"""(metric, label, format) of the one-line step summary, in order; a metric the step did not log is left out."""

CONSPO_NOTE = (
    "ConSPO: TRL's loss is 0 at every step by construction (ratio 1, one update per rollout batch, advantages that "
    "sum to 0 in each group), so the step line shows 1-P+ instead: the probability ConSPO's InfoNCE still puts on "
    "the negatives, averaged over each group's positives and the contrastive groups (0 when solved; "
    "cepo/conspo_neg_prob in metrics.jsonl)"
)
"""Printed once when a ConSPO run starts."""


def _shows_conspo_metric(method: str | None) -> bool:
    """Whether ``method``'s step line shows ConSPO's ``1-P+`` in place of TRL's loss (0 by construction)."""
    return method is not None and method in METHODS and METHODS[method].sequence_advantage == "conspo"


def step_line(row: dict[str, Any], method: str | None = None) -> str:
    """``step N | reward ... | lambda ... | ... | step 1.23s`` for one metrics row of a run of ``method``. ConSPO's
    line leaves TRL's loss out (0 by construction: :data:`CONSPO_NOTE`) and shows ``1-P+``."""
    skip = {"loss"} if _shows_conspo_metric(method) else set()
    parts = [f"step {row['step']:>4}"]
    parts += [f"{label} {fmt.format(row[key])}" for key, label, fmt in STEP_LINE_FIELDS
              if row.get(key) is not None and key not in skip]
    return " | ".join([*parts, f"step {row['wall_seconds']:.2f}s"])


class QuietProgressCallback(ProgressCallback):
    """TRL's progress bar without the raw log dict after every step (our one-line summary replaces it)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None


def lora_config(rank: int = 16, alpha: int = 32) -> Any:
    """The paper's LoRA (rank 16, alpha 32) on the language model's linear layers."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")


def _choose_checkpoint(
    run_dir: Path, resume_from_checkpoint: str | bool, args: CEPOGRPOConfig, names: OptionNames
) -> str:
    """The checkpoint to resume: the given one if complete, else the newest complete one (``True``)."""
    if resume_from_checkpoint is True:
        choice = find_resumable_checkpoint(run_dir)
        for path, problems in choice.skipped:
            print(f"resume: skipping {path.name} (incomplete: {'; '.join(problems)})", file=sys.stderr)
        if choice.checkpoint is None:
            if choice.skipped:
                raise ValueError(
                    f"cannot resume {run_dir}: no complete checkpoint ({choice.describe_skipped()}); "
                    f"start the run again with {names.overwrite}"
                )
            raise ValueError(f"cannot resume {run_dir}: it holds no checkpoint; run without {names.resume}")
        checkpoint = choice.checkpoint
        if choice.skipped:
            print(f"resume: continuing from {checkpoint.name}", file=sys.stderr)
    else:
        checkpoint = Path(resume_from_checkpoint)
        problems = checkpoint_problems(checkpoint)
        if problems:
            raise ValueError(f"cannot resume from {checkpoint}: {'; '.join(problems)}")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    planned, done = int(state.get("max_steps") or 0), int(state.get("global_step") or 0)
    schedule = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    reschedules = bool(planned) and planned != args.max_steps and schedule not in SCHEDULES_WITHOUT_END
    if reschedules and done >= planned and args.max_steps > planned:
        raise ValueError(
            f"{checkpoint} ends a finished run ({names.steps_for(planned)}): its {schedule} learning-rate "
            f"schedule has ended, and extending the run to {names.steps_for(args.max_steps)} would restart the "
            f"learning rate part-way up. Train it as a new run ({names.overwrite} "
            f"{names.steps_for(args.max_steps)}, or {names.output_dir})"
        )
    if done >= args.max_steps:  # transformers would still train one more step
        result = "final/ holds the result" if (run_dir / "final").is_dir() else \
            f"{checkpoint.name}/ holds the trained model"
        raise ValueError(
            f"{checkpoint} is step {done}: the run is already at or past the requested "
            f"{names.steps_for(args.max_steps)} "
            f"and nothing is left to resume ({result}); to train longer, start a new run ({names.overwrite}, or "
            f"{names.output_dir})"
        )
    if reschedules:
        print(
            f"resume: {checkpoint.name} comes from a run of {names.steps_for(planned)}; from here on its {schedule} "
            f"learning-rate schedule is laid out for {names.steps_for(args.max_steps)} instead",
            file=sys.stderr,
        )
    return str(checkpoint)


def check_run_dir(
    args: CEPOGRPOConfig, resume_from_checkpoint: str | bool | None, overwrite: bool, names: OptionNames
) -> str | None:
    """Check the run directory ``args.output_dir`` before anything slow (warm start, model load) happens.

    The directory must be writable (``cepo.output_paths.check_output_dir``); ``resume`` and ``overwrite`` exclude
    each other; existing checkpoints need one of them; a resumed run must exist and hold a complete checkpoint.
    Returns the checkpoint to resume (a path; ``None`` for a new run): pass it on as ``resume_from_checkpoint``,
    it is checked again without new messages. Raises ``ValueError`` naming the option and the fix.
    """
    from cepo.output_paths import check_output_dir

    run_dir = check_output_dir(args.output_dir, names.output_option)
    if resume_from_checkpoint and overwrite:
        raise ValueError(
            f"{names.resume} and {names.overwrite} exclude each other: {names.resume} continues the run in {run_dir}, "
            f"{names.overwrite} deletes it; give one of them"
        )
    existing = list_checkpoints(run_dir)
    if existing and not resume_from_checkpoint and not overwrite:
        raise ValueError(
            f"{run_dir} already holds checkpoints ({', '.join(p.name for p in existing[:3])}"
            f"{', ...' if len(existing) > 3 else ''}); resume it ({names.resume}), start elsewhere "
            f"({names.output_dir}), or delete them ({names.overwrite})"
        )
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint is True and not run_dir.is_dir():
        raise ValueError(f"cannot resume {run_dir}: the directory does not exist; run without {names.resume} to "
                         f"start it, or set {names.output_option} to the run to continue")
    return _choose_checkpoint(run_dir, resume_from_checkpoint, args, names)


def _close_progress_bar(trainer: Any) -> None:
    for callback in trainer.callback_handler.callbacks:
        bar = getattr(callback, "training_bar", None)
        if bar is not None:
            bar.close()


def train(
    model: Any,
    processing_class: Any,
    train_dataset: Any,
    args: CEPOGRPOConfig,
    peft_config: Any = None,
    resume_from_checkpoint: str | bool | None = None,
    echo: bool = True,
    overwrite: bool = False,
    names: OptionNames | None = None,
) -> CEPOTrainer:
    """Train with ``CEPOTrainer`` and write the run directory at ``args.output_dir``.

    A run directory that already holds checkpoints is never silently overwritten: pass
    ``resume_from_checkpoint`` to continue it (``True``: the newest complete checkpoint), ``overwrite=True``
    to delete its checkpoints, metrics and ``final/`` first, or choose another ``output_dir``. ``names`` spells
    those options as the caller's command line does, in error messages. Ctrl-C raises
    :class:`TrainingInterrupted`.
    """
    names = names or OptionNames()
    run_dir = Path(args.output_dir)
    resume_from_checkpoint = check_run_dir(args, resume_from_checkpoint, overwrite, names)
    existing = list_checkpoints(run_dir)
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
    check_dataset_size(len(train_dataset), args, names.batch)
    cepo = args.cepo_config()
    if existing and not resume_from_checkpoint:  # overwrite, now that the inputs are known to be good
        for path in [*existing, run_dir / "final"]:
            shutil.rmtree(path, ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_staging(run_dir)
    (run_dir / "config.json").write_text(json.dumps(json.loads(args.to_json_string()), indent=2, sort_keys=True))
    reward = make_math_reward(cepo.reward.accuracy_weight, cepo.reward.format_weight)
    base_model = getattr(getattr(model, "config", None), "_name_or_path", None) or None  # before LoRA wraps it
    trainer = CEPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        callbacks=[MetricsFileCallback(run_dir / "metrics.jsonl", echo=echo, method=args.cepo_method)],
    )
    if echo and trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback)
    try:
        trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
        staged = run_dir / f"{STAGING_PREFIX}final"
        shutil.rmtree(staged, ignore_errors=True)
        trainer.save_model(str(staged))
        processing_class.save_pretrained(str(staged))
        publish_directory(staged, run_dir / "final")
        fix_model_card(run_dir / "README.md", args.cepo_method, base_model, run_dir / "final")
    except KeyboardInterrupt:
        _close_progress_bar(trainer)
        if trainer.args.should_save:
            remove_staging(run_dir)  # a checkpoint interrupted mid-save was never renamed into place
        last = find_resumable_checkpoint(run_dir).checkpoint
        raise TrainingInterrupted(run_dir, trainer.state.global_step, last) from None
    except (OSError, RuntimeError) as err:
        if not disk_full(err, run_dir):
            raise
        _close_progress_bar(trainer)
        last = find_resumable_checkpoint(run_dir).checkpoint
        raise DiskFull(run_dir, trainer.state.global_step, last) from err
    return trainer
