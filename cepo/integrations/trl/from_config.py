"""``cepo train --config configs/<method>.yaml``: the verl method YAML, run on the TRL engine.

The YAML is composed exactly as the verl entry point composes it (Hydra, verl's base config
on the search path, ``cepo.integrations.verl.hydra_config.compose_method_config``), then the
standard verl keys below are mapped to ``CEPOGRPOConfig``; the ``cepo:`` block maps one to one.

| verl key                                   | TRL field                                   |
|--------------------------------------------|---------------------------------------------|
| actor_rollout_ref.model.path               | model                                       |
| actor_rollout_ref.model.lora_rank / _alpha | LoRA r / alpha (rank 0 = full fine-tuning)  |
| actor_rollout_ref.actor.optim.lr           | learning_rate                               |
| actor_rollout_ref.actor.optim.lr_warmup_steps | warmup_steps (negative = none)           |
| actor_rollout_ref.actor.optim.lr_scheduler_type | lr_scheduler_type                      |
| actor_rollout_ref.actor.optim.weight_decay | weight_decay                                |
| actor_rollout_ref.actor.clip_ratio_low/high| epsilon / epsilon_high                      |
| actor_rollout_ref.rollout.n                | num_generations                             |
| actor_rollout_ref.rollout.temperature      | temperature                                 |
| data.train_batch_size (prompts)            | per_device_train_batch_size = prompts * n   |
| data.max_response_length                   | max_completion_length                       |
| data.train_files                           | the training parquet(s)                     |
| trainer.total_training_steps               | max_steps                                   |
| trainer.default_local_dir                  | output_dir                                  |
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
    """Compose a method YAML given by path (it must live in the cepo ``configs/`` directory)."""
    from cepo.integrations.verl.hydra_config import compose_method_config, configs_dir

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist; see configs/ for the method YAMLs")
    home = configs_dir()
    if path.resolve().parent != home.resolve():
        raise ValueError(
            f"config {str(path)!r} is not in {home}; put it there (it composes with verl's base config and the "
            "shared paper_base.yaml) or set CEPO_CONFIGS_DIR to its folder"
        )
    return compose_method_config(path.stem, list(overrides or []))


def trl_args(cfg: DictConfig, **extra: Any) -> CEPOGRPOConfig:
    """``CEPOGRPOConfig`` for a composed method config (mapping in the module docstring)."""
    cepo = CEPOConfig.from_mapping(OmegaConf.to_container(cfg.cepo, resolve=True) if "cepo" in cfg else {})
    n = int(_select(cfg, "actor_rollout_ref.rollout.n", 8))
    prompts = int(_select(cfg, "data.train_batch_size", 32))
    warmup = int(_select(cfg, "actor_rollout_ref.actor.optim.lr_warmup_steps", 0))
    settings: dict[str, Any] = {
        "output_dir": str(_select(cfg, "trainer.default_local_dir", "runs/train")),
        "learning_rate": float(_select(cfg, "actor_rollout_ref.actor.optim.lr", 1e-6)),
        "warmup_steps": max(0, warmup),
        "lr_scheduler_type": str(_select(cfg, "actor_rollout_ref.actor.optim.lr_scheduler_type", "constant")),
        "weight_decay": float(_select(cfg, "actor_rollout_ref.actor.optim.weight_decay", 0.01)),
        "epsilon": float(_select(cfg, "actor_rollout_ref.actor.clip_ratio_low", 0.2)),
        "epsilon_high": float(_select(cfg, "actor_rollout_ref.actor.clip_ratio_high", 0.28)),
        "num_generations": n,
        "temperature": float(_select(cfg, "actor_rollout_ref.rollout.temperature", 1.0)),
        "per_device_train_batch_size": prompts * n,
        "max_completion_length": int(_select(cfg, "data.max_response_length", 2048)),
        "max_steps": int(_select(cfg, "trainer.total_training_steps", 50)),
        "logging_steps": 1,
        "save_steps": int(_select(cfg, "trainer.save_freq", 25)) if int(_select(cfg, "trainer.save_freq", 25)) > 0
        else 25,
        "report_to": "none",
        **CEPOGRPOConfig.fields_from_cepo(cepo),
    }
    import torch

    if not torch.cuda.is_available():  # TRL defaults to bf16 on GPU; on a CPU-only machine train in fp32
        settings.update(use_cpu=True, bf16=False)
    settings.update(extra)
    return CEPOGRPOConfig(**settings)


def load_model(path: str) -> tuple[Any, Any]:
    """A vision-language model with its processor, or a text-only causal LM with its tokenizer."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    if getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None:
        return AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def train_from_config(
    config: str | Path, overrides: list[str] | None = None, resume: bool = False, overwrite: bool = False
) -> Path:
    """Compose, map, load and train; returns the run directory."""
    from cepo.integrations.trl.run import lora_config, train

    cfg = compose(config, overrides)
    args = trl_args(cfg)
    dataset = load_train_dataset(
        _select(cfg, "data.train_files"),
        prompt_key=str(_select(cfg, "data.prompt_key", "prompt")),
        image_key=str(_select(cfg, "data.image_key", "images")),
    )
    model, processor = load_model(str(_select(cfg, "actor_rollout_ref.model.path")))
    rank = int(_select(cfg, "actor_rollout_ref.model.lora_rank", 0))
    peft = lora_config(rank, int(_select(cfg, "actor_rollout_ref.model.lora_alpha", 2 * rank))) if rank > 0 else None
    train(model, processor, dataset, args, peft_config=peft, resume_from_checkpoint=True if resume else None,
          overwrite=overwrite)
    return Path(args.output_dir)
