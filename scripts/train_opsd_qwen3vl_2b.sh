#!/usr/bin/env bash
# OPSD on Qwen3-VL-2B-Instruct + Geo3k, the paper's setup (configs/opsd.yaml on top of configs/paper_base.yaml).
#   NGPUS=8 MODEL_PATH=Qwen/Qwen3-VL-2B-Instruct DATA_DIR=~/data/geo3k bash scripts/train_opsd_qwen3vl_2b.sh [hydra overrides]
# e.g. append cepo.distill.weight=0.5 trainer.logger='[console,wandb]'
set -euo pipefail
export CONFIG=opsd
export MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-VL-2B-Instruct}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/_train_common.sh" "$@"
