#!/usr/bin/env bash
# OPSD on Qwen3-1.7B (thinking off) + DAPO-Math-17k, validated on MATH-500 / AIME 2024 / AIME 2025: configs/text/opsd.yaml
# (the paper's shared setup + configs/text/math_base.yaml, whose header gives every text-specific choice and its source).
#   python scripts/prepare_math.py --local-dir ~/data/math
#   NGPUS=8 MODEL_PATH=Qwen/Qwen3-1.7B DATA_DIR=~/data/math bash scripts/train_opsd_qwen3_math.sh [hydra overrides]
# e.g. append cepo.distill.weight=0.5 trainer.logger='[console,wandb]'; MODEL_PATH=Qwen/Qwen3-4B for the 4B model
set -euo pipefail
export CONFIG=text/opsd
export MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-1.7B}"
export DATASET=math
export VAL_SPLITS="${VAL_SPLITS:-math500 aime2024 aime2025}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/_train_common.sh" "$@"
