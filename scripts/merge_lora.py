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

from cepo.cli import OneLineParser
from cepo.lora import merge


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           error_prefix="[merge_lora]")
    parser.add_argument("--base", required=True, help="base model path or hub name (actor_rollout_ref.model.path)")
    parser.add_argument("--adapter", required=True, help="PEFT adapter directory from the verl checkpoint")
    parser.add_argument("--out", required=True, help="output directory for the merged Hugging Face checkpoint")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    args = parser.parse_args(argv)
    try:
        path = merge(args.base, args.adapter, args.out, args.dtype,
                     names={"base": "--base", "adapter": "--adapter", "out": "--out"})
    except (FileNotFoundError, ValueError) as err:
        print(f"[merge_lora] error: {err}", file=sys.stderr)
        return 2
    print(f"[merge_lora] merged checkpoint written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
