#!/usr/bin/env bash
# Shared launcher: run `python -m cepo.integrations.verl.main --config-name "$CONFIG"` with the paper setup.
# Environment: NGPUS (GPUs on this node, default 8), NNODES (default 1), MODEL_PATH, DATA_DIR (output of
# scripts/prepare_geo3k.py, default ~/data/geo3k), EXPERIMENT (run name); extra Hydra overrides come from "$@".
set -euo pipefail
: "${CONFIG:?set CONFIG to grpo, rlsd or cepo}"
NGPUS="${NGPUS:-8}"
NNODES="${NNODES:-1}"
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-VL-2B-Instruct}"
DATA_DIR="${DATA_DIR:-$HOME/data/geo3k}"
EXPERIMENT="${EXPERIMENT:-${CONFIG}_$(basename "$MODEL_PATH")_geo3k}"
PYTHON="${PYTHON:-python}"

if [[ ! -f "$DATA_DIR/train.parquet" ]]; then
  echo "no $DATA_DIR/train.parquet: run 'python scripts/prepare_geo3k.py --local-dir $DATA_DIR' first" >&2
  exit 2
fi

exec "$PYTHON" -m cepo.integrations.verl.main --config-name "$CONFIG" \
  actor_rollout_ref.model.path="$MODEL_PATH" \
  data.train_files="$DATA_DIR/train.parquet" \
  data.val_files="$DATA_DIR/test.parquet" \
  trainer.n_gpus_per_node="$NGPUS" \
  trainer.nnodes="$NNODES" \
  trainer.experiment_name="$EXPERIMENT" \
  "$@"
