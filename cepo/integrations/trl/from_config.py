"""``cepo train --config configs/<method>.yaml``: the verl method YAML, run on the TRL engine.

The YAML is composed exactly as the verl entry point composes it (Hydra, verl's base config
on the search path, ``cepo.recipes.compose_method_config``), then the
standard verl keys below are mapped to ``CEPOGRPOConfig``; the ``cepo:`` block maps one to one.

| verl key                                        | TRL field                                             |
|-------------------------------------------------|-------------------------------------------------------|
| actor_rollout_ref.model.path                    | model                                                 |
| actor_rollout_ref.model.lora_rank / lora_alpha  | LoRA r / alpha (rank 0 = full fine-tuning)            |
| actor_rollout_ref.model.enable_gradient_checkpointing | gradient_checkpointing                          |
| actor_rollout_ref.actor.optim.lr                | learning_rate                                         |
| actor_rollout_ref.actor.optim.lr_scheduler_type | lr_scheduler_type                                     |
| actor_rollout_ref.actor.optim.lr_warmup_steps   | warmup_steps = lr_warmup_steps x optim. steps per step |
| actor_rollout_ref.actor.optim.weight_decay      | weight_decay                                          |
| actor_rollout_ref.actor.clip_ratio_low / high   | epsilon / epsilon_high                                |
| actor_rollout_ref.rollout.n                     | num_generations                                       |
| actor_rollout_ref.rollout.temperature           | temperature                                           |
| data.max_response_length                        | max_completion_length                                 |
| data.apply_chat_template_kwargs                 | chat_template_kwargs (e.g. enable_thinking)           |
| data.train_files                                | the training data                                     |
| trainer.default_local_dir                       | output_dir                                            |

The batch layout (:func:`trl_batch_layout`; P = number of processes): one verl *training step* (a rollout
batch of ``data.train_batch_size`` prompts x ``rollout.n``) is one TRL generation round; it is split into
``train_batch_size / ppo_mini_batch_size`` optimizer steps of ``ppo_mini_batch_size x n`` sequences, each
accumulated from micro-batches of ``ppo_micro_batch_size_per_gpu`` sequences per process, and repeated for
``ppo_epochs`` passes:

| verl key                                        | TRL field                                             |
|-------------------------------------------------|-------------------------------------------------------|
| actor.ppo_micro_batch_size_per_gpu              | per_device_train_batch_size                           |
| actor.ppo_mini_batch_size x n / (micro x P)     | gradient_accumulation_steps                           |
| data.train_batch_size x n / (micro x P)         | steps_per_generation                                  |
| actor.ppo_epochs                                | num_iterations                                        |
| trainer.total_training_steps                    | max_steps = total_training_steps x optim. steps per step |

verl steps its learning-rate schedule once per training step, TRL once per optimizer step: the TRL schedule
has the same warm-up and length in training steps, and also moves between the optimizer steps of one
training step. ``cepo.warmup_steps`` (the lambda schedule) counts training steps on both engines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cepo.config import CEPOConfig
from cepo.integrations.trl.config import CEPOGRPOConfig
from cepo.integrations.trl.data import load_train_dataset


def _select(cfg: DictConfig, key: str, default: Any = None) -> Any:
    value = OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def compose(config: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """Compose a method YAML given by path: it must live in the cepo ``configs/`` directory or a folder inside it
    (``configs/text/cepo.yaml`` composes as the config name ``text/cepo``, as verl's ``--config-name text/cepo``)."""
    from cepo.recipes import compose_method_config, configs_dir

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist; see configs/ for the method YAMLs")
    home = configs_dir().resolve()
    if not path.resolve().is_relative_to(home):
        raise ValueError(
            f"config {str(path)!r} is not in {home}; put it there (it composes with verl's base config and the "
            "shared paper_base.yaml) or set CEPO_CONFIGS_DIR to its folder"
        )
    name = path.resolve().relative_to(home).with_suffix("").as_posix()
    return compose_method_config(name, list(overrides or []), engine="trl")


def trl_batch_layout(cfg: DictConfig, num_processes: int = 1) -> dict[str, int]:
    """verl's batch keys as TRL fields (second table of the module docstring), for ``num_processes`` processes.

    Returns ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``steps_per_generation``,
    ``num_iterations`` and ``optimizer_steps_per_training_step``. Raises ``ValueError`` naming the key when the
    batch does not split into whole micro-batches per process.
    """
    n = int(_select(cfg, "actor_rollout_ref.rollout.n", 8))
    prompts = int(_select(cfg, "data.train_batch_size", 32))
    mini = int(_select(cfg, "actor_rollout_ref.actor.ppo_mini_batch_size", prompts))
    epochs = int(_select(cfg, "actor_rollout_ref.actor.ppo_epochs", 1))
    if mini <= 0 or prompts % mini:
        raise ValueError(f"actor_rollout_ref.actor.ppo_mini_batch_size={mini} must divide data.train_batch_size="
                         f"{prompts}")
    if epochs < 1:
        raise ValueError(f"actor_rollout_ref.actor.ppo_epochs must be >= 1, got {epochs}")
    mini_sequences = mini * n
    micro = OmegaConf.select(cfg, "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu")
    if micro is None:  # dynamic batching on verl: one micro-batch per process and optimizer step
        micro = mini_sequences // num_processes
    micro = int(micro)
    if micro <= 0 or mini_sequences % (micro * num_processes):
        raise ValueError(
            f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro} x {num_processes} process(es) must divide "
            f"the optimizer batch ppo_mini_batch_size x rollout.n = {mini} x {n} = {mini_sequences} sequences; "
            "choose a micro-batch size (or a process count) that divides it"
        )
    per_step = micro * num_processes
    return {
        "per_device_train_batch_size": micro,
        "gradient_accumulation_steps": mini_sequences // per_step,
        "steps_per_generation": prompts * n // per_step,
        "num_iterations": epochs,
        "optimizer_steps_per_training_step": prompts // mini * epochs,
    }


def _num_processes() -> int:
    """Processes of this launch (``accelerate launch`` / ``torchrun`` set ``WORLD_SIZE``)."""
    import os

    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def _chat_template_kwargs(cfg: DictConfig) -> dict[str, Any] | None:
    """verl's ``data.apply_chat_template_kwargs`` as a plain dict (``None`` when unset or empty)."""
    kwargs = OmegaConf.select(cfg, "data.apply_chat_template_kwargs")
    if kwargs is None:
        return None
    if not isinstance(kwargs, DictConfig):
        raise ValueError(f"data.apply_chat_template_kwargs must be a mapping (e.g. {{enable_thinking: false}}), "
                         f"got {kwargs!r}")
    return OmegaConf.to_container(kwargs, resolve=True) or None  # type: ignore[return-value]


def trl_args(cfg: DictConfig, num_processes: int | None = None, **extra: Any) -> CEPOGRPOConfig:
    """``CEPOGRPOConfig`` for a composed method config (mapping in the module docstring)."""
    cepo = CEPOConfig.from_mapping(OmegaConf.to_container(cfg.cepo, resolve=True) if "cepo" in cfg else {})
    n = int(_select(cfg, "actor_rollout_ref.rollout.n", 8))
    layout = trl_batch_layout(cfg, num_processes or _num_processes())
    per_training_step = layout.pop("optimizer_steps_per_training_step")
    warmup = int(_select(cfg, "actor_rollout_ref.actor.optim.lr_warmup_steps", 0))
    save_freq = int(_select(cfg, "trainer.save_freq", 25))
    settings: dict[str, Any] = {
        "output_dir": str(_select(cfg, "trainer.default_local_dir", "runs/train")),
        "learning_rate": float(_select(cfg, "actor_rollout_ref.actor.optim.lr", 1e-6)),
        "warmup_steps": max(0, warmup) * per_training_step,
        "lr_scheduler_type": str(_select(cfg, "actor_rollout_ref.actor.optim.lr_scheduler_type", "constant")),
        "weight_decay": float(_select(cfg, "actor_rollout_ref.actor.optim.weight_decay", 0.01)),
        "epsilon": float(_select(cfg, "actor_rollout_ref.actor.clip_ratio_low", 0.2)),
        "epsilon_high": float(_select(cfg, "actor_rollout_ref.actor.clip_ratio_high", 0.28)),
        "num_generations": n,
        "temperature": float(_select(cfg, "actor_rollout_ref.rollout.temperature", 1.0)),
        **layout,
        "gradient_checkpointing": bool(_select(cfg, "actor_rollout_ref.model.enable_gradient_checkpointing", False)),
        "max_completion_length": int(_select(cfg, "data.max_response_length", 2048)),
        # the student prompts' chat-template variables (Qwen3's enable_thinking); the teacher prompts use them too
        "chat_template_kwargs": _chat_template_kwargs(cfg),
        "max_steps": int(_select(cfg, "trainer.total_training_steps", 50)) * per_training_step,
        "logging_steps": 1,
        # whole training steps, so a resumed run starts at a generation round
        "save_steps": (save_freq if save_freq > 0 else 25) * per_training_step,
        "report_to": "none",
        **CEPOGRPOConfig.fields_from_cepo(cepo),
    }
    import torch

    if not torch.cuda.is_available():  # TRL defaults to bf16 on GPU; on a CPU-only machine train in fp32
        settings.update(use_cpu=True, bf16=False)
    settings.update(extra)
    return CEPOGRPOConfig(**settings)


def load_model(path: str, processing_class: Any = None) -> tuple[Any, Any]:
    """A vision-language model with its processor, or a text-only causal LM with its tokenizer.

    ``processing_class`` reuses one already loaded (``cepo.integrations.trl.data.load_processing_class``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from cepo.integrations.trl.data import load_processing_class

    processor = processing_class if processing_class is not None else load_processing_class(path)
    local = Path(path).expanduser()
    source = str(local) if local.exists() else path
    if getattr(AutoConfig.from_pretrained(source), "vision_config", None) is not None:
        return AutoModelForImageTextToText.from_pretrained(source), processor
    return AutoModelForCausalLM.from_pretrained(source), processor


def train_from_config(
    config: str | Path,
    overrides: list[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_bad_image: str = "fail",
) -> Path:
    """Compose, map, check the data, load and train; returns the run directory.

    Every data check (files, answers, images, ``data.max_prompt_length``, one batch of prompts) runs before
    the model's weights are loaded; only the processor (no weights) is loaded first, to count prompt tokens.
    ``on_bad_image``: ``"fail"`` (default) or ``"skip"`` rows whose image cannot be opened.
    """
    from cepo.integrations.trl.data import check_dataset_size, load_processing_class
    from cepo.integrations.trl.run import OptionNames, check_run_dir, lora_config, train

    cfg = compose(config, overrides)
    args = trl_args(cfg)
    training_steps = int(_select(cfg, "trainer.total_training_steps", 0))
    if args.max_steps <= 0 or training_steps <= 0:
        raise ValueError(
            f"trainer.total_training_steps={training_steps}: the TRL engine needs a positive number of steps"
        )
    names = OptionNames(
        resume="--resume",
        overwrite="--overwrite",
        output_dir="trainer.default_local_dir=<another dir>",
        steps="trainer.total_training_steps={}",
        batch="data.train_batch_size (prompts per step)",
        optimizer_steps_per_step=max(1, args.max_steps // training_steps),
        output_option="trainer.default_local_dir",
    )
    checkpoint = check_run_dir(args, True if resume else None, overwrite, names)  # before the data and the model
    model_path = str(_select(cfg, "actor_rollout_ref.model.path"))
    loaded: dict[str, Any] = {}

    def processor() -> Any:  # loaded only once the file, answer and image checks have passed
        if "processor" not in loaded:
            loaded["processor"] = load_processing_class(model_path)
        return loaded["processor"]

    max_prompt_length = _select(cfg, "data.max_prompt_length")
    dataset = load_train_dataset(
        _select(cfg, "data.train_files"),
        prompt_key=str(_select(cfg, "data.prompt_key", "prompt")),
        image_key=str(_select(cfg, "data.image_key", "images")),
        processing_class=processor,
        max_prompt_length=int(max_prompt_length) if max_prompt_length is not None else None,
        filter_overlong_prompts=bool(_select(cfg, "data.filter_overlong_prompts", False)),
        truncation=str(_select(cfg, "data.truncation", "error")),
        on_bad_image=on_bad_image,
        chat_template_kwargs=args.chat_template_kwargs,  # prompt lengths counted as the trainer renders them
    )
    check_dataset_size(len(dataset), args, names.batch)
    model, processing_class = load_model(model_path, processor())
    rank = int(_select(cfg, "actor_rollout_ref.model.lora_rank", 0))
    peft = lora_config(rank, int(_select(cfg, "actor_rollout_ref.model.lora_alpha", 2 * rank))) if rank > 0 else None
    train(model, processing_class, dataset, args, peft_config=peft, resume_from_checkpoint=checkpoint,
          overwrite=overwrite, names=names)
    return Path(args.output_dir)
