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
from cepo.data.geo3k import IMAGE_PLACEHOLDER, missing_answers, student_prompt
from cepo.integrations.trl.config import CEPOGRPOConfig


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


def _answer(row: dict[str, Any]) -> Any:
    if row.get("answer") not in (None, ""):
        return row["answer"]
    reward_model = row.get("reward_model") or {}
    return reward_model.get("ground_truth") if isinstance(reward_model, dict) else None


def _strip_placeholders(messages: Any) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": student_prompt(messages)}]
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, str):
            content = content.replace(IMAGE_PLACEHOLDER, "").strip()
        out.append({"role": message["role"], "content": content})
    return out


def load_train_dataset(cfg: DictConfig) -> Any:
    """The ``data.train_files`` parquet(s) in TRL's conversational layout (``prompt``, ``images``, ``answer``).

    Accepts verl's parquet (``prompt`` messages with ``<image>`` placeholders and
    ``reward_model.ground_truth``) or Geo3k's own columns (``problem``/``answer``). Rows without an
    answer fail here, with their indices, before any model is loaded.
    """
    import datasets

    files = _select(cfg, "data.train_files")
    if files is None:
        raise ValueError("data.train_files is not set; point it at the parquet from scripts/prepare_geo3k.py")
    files = [files] if isinstance(files, str) else list(files)
    for file in files:
        if not Path(file).is_file():
            raise FileNotFoundError(f"data.train_files entry {file!r} does not exist; run scripts/prepare_geo3k.py")
    dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    prompt_key = str(_select(cfg, "data.prompt_key", "prompt"))
    if prompt_key not in dataset.column_names and "problem" in dataset.column_names:
        prompt_key = "problem"
    if prompt_key not in dataset.column_names:
        raise ValueError(f"data.prompt_key={prompt_key!r} is not a column of {files} ({dataset.column_names})")
    missing = missing_answers(_answer(row) for row in dataset)
    if missing:
        raise ValueError(f"rows {missing[:10]} of {files} have no answer (answer or reward_model.ground_truth)")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": _strip_placeholders(row[prompt_key]), "answer": str(_answer(row)).strip()}

    image_key = str(_select(cfg, "data.image_key", "images"))
    keep = {image_key}
    out = dataset.map(convert, remove_columns=[c for c in dataset.column_names if c not in keep])
    if image_key in out.column_names and image_key != "images":
        out = out.rename_column(image_key, "images")
    return out


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
    dataset = load_train_dataset(cfg)
    model, processor = load_model(str(_select(cfg, "actor_rollout_ref.model.path")))
    rank = int(_select(cfg, "actor_rollout_ref.model.lora_rank", 0))
    peft = lora_config(rank, int(_select(cfg, "actor_rollout_ref.model.lora_alpha", 2 * rank))) if rank > 0 else None
    train(model, processor, dataset, args, peft_config=peft, resume_from_checkpoint=True if resume else None,
          overwrite=overwrite)
    return Path(args.output_dir)
