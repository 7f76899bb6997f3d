"""LoRA adapters -> merged Hugging Face checkpoints (used by ``scripts/merge_lora.py`` and ``cepo eval``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def merge(base: str, adapter: str, out: str, dtype: str = "bfloat16", names: Mapping[str, str] | None = None) -> Path:
    """Load ``base`` + ``adapter``, merge the LoRA weights into the base weights and save to ``out``.

    ``adapter`` is a PEFT adapter directory (``adapter_config.json`` + weights): a TRL run's ``final/`` or
    ``checkpoint-*``, or verl's ``actor/lora_adapter``. The processor (or tokenizer) of ``base`` is saved next to the
    merged weights, so ``out`` loads with ``AutoModelForImageTextToText`` / ``AutoProcessor``. ``names`` spells
    ``base``, ``adapter`` and ``out`` in messages as the caller's options (``merge_lora.py``: ``--base`` ...).

    Every input is checked before the weights load, and ``out`` is created only once the merge succeeded.

    Raises:
        FileNotFoundError: ``adapter`` or a local ``base`` does not exist; ``adapter`` has no ``adapter_config.json``.
        ValueError: ``out`` cannot be written (``cepo.output_paths.check_output_dir``), ``base`` is not a model
            checkpoint transformers can load, or ``adapter`` does not fit ``base``.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    from cepo.output_paths import check_output_dir

    name = {"base": "base", "adapter": "adapter", "out": "out", **(names or {})}
    adapter_dir = Path(adapter).expanduser()
    if not adapter_dir.exists():
        raise FileNotFoundError(f"{name['adapter']} {adapter!r} does not exist; pass the PEFT adapter directory")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{name['adapter']} {adapter!r} has no adapter_config.json; pass the PEFT adapter "
                                "directory")
    target = check_output_dir(out, name["out"])
    local = Path(base).expanduser()
    if base.startswith(("/", ".", "~")) and not local.exists():
        raise FileNotFoundError(f"{name['base']} {base!r} does not exist (a checkpoint path; a hub id looks like "
                                "org/name)")
    source = str(local) if local.exists() else base
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot load {name['base']} {base!r}: {_first_line(err)}") from None
    loader = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    model = loader.from_pretrained(source, dtype=getattr(torch, dtype))
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as err:
        raise ValueError(f"{name['adapter']} {adapter!r} does not fit {name['base']} {base!r}: "
                         f"{_first_line(err)}") from None
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(target)
    try:
        AutoProcessor.from_pretrained(source).save_pretrained(target)
    except (OSError, ValueError):
        AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
