#!/usr/bin/env python
"""Merge a LoRA adapter saved by a verl run into its base model and save a Hugging Face checkpoint.

  python scripts/merge_lora.py --base Qwen/Qwen3-VL-2B-Instruct \
      --adapter checkpoints/cepo/cepo_geo3k/global_step_50/actor/lora_adapter --out merged/cepo-2b

``--adapter`` is a PEFT adapter directory (``adapter_config.json`` + weights), as verl's FSDP checkpoint
writes under ``actor/lora_adapter``. For a sharded FSDP checkpoint without one, first run verl's merger:
``python -m verl.model_merger merge --backend fsdp --local_dir <.../actor> --target_dir <dir>``. The
processor/tokenizer of ``--base`` is saved next to the merged weights, so ``--out`` loads with
``AutoModelForImageTextToText`` / ``AutoProcessor``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def merge(base: str, adapter: str, out: str, dtype: str = "bfloat16") -> Path:
    """Load ``base`` + ``adapter``, merge the LoRA weights into the base weights and save to ``out``."""
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="base model path or hub name (actor_rollout_ref.model.path)")
    parser.add_argument("--adapter", required=True, help="PEFT adapter directory from the verl checkpoint")
    parser.add_argument("--out", required=True, help="output directory for the merged Hugging Face checkpoint")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    try:
        path = merge(args.base, args.adapter, args.out, args.dtype)
    except FileNotFoundError as err:
        print(f"[merge_lora] error: {err}", file=sys.stderr)
        return 2
    print(f"[merge_lora] merged checkpoint written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
