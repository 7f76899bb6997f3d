"""LoRA adapters -> merged Hugging Face checkpoints (used by ``scripts/merge_lora.py`` and ``cepo eval``)."""

from __future__ import annotations

from pathlib import Path


def merge(base: str, adapter: str, out: str, dtype: str = "bfloat16") -> Path:
    """Load ``base`` + ``adapter``, merge the LoRA weights into the base weights and save to ``out``.

    ``adapter`` is a PEFT adapter directory (``adapter_config.json`` + weights): a TRL run's ``final/`` or
    ``checkpoint-*``, or verl's ``actor/lora_adapter``. The processor (or tokenizer) of ``base`` is saved next to the
    merged weights, so ``out`` loads with ``AutoModelForImageTextToText`` / ``AutoProcessor``.

    Raises:
        FileNotFoundError: ``adapter`` has no ``adapter_config.json``.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter} has no adapter_config.json; pass the PEFT adapter directory")
    torch_dtype = getattr(torch, dtype)
    config = AutoConfig.from_pretrained(base)
    vision = hasattr(config, "vision_config")
    loader = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    model = loader.from_pretrained(base, dtype=torch_dtype)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(target)
    try:
        AutoProcessor.from_pretrained(base).save_pretrained(target)
    except (OSError, ValueError):
        AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return target
