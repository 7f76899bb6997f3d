#!/usr/bin/env bash
# ConSPO on Qwen3-VL-2B-Instruct + Geo3k, the paper's setup (configs/conspo.yaml on top of configs/paper_base.yaml).
#   NGPUS=8 MODEL_PATH=Qwen/Qwen3-VL-2B-Instruct DATA_DIR=~/data/geo3k bash scripts/train_conspo_qwen3vl_2b.sh [hydra overrides]
# e.g. append cepo.conspo.tau=5 trainer.logger='[console,wandb]'
set -euo pipefail
export CONFIG=conspo
export MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-VL-2B-Instruct}"
exec bash "$(dirname "${BASH_SOURCE[0]}")/_train_common.sh" "$@"
