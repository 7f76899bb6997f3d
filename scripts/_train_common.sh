#!/usr/bin/env bash
# Shared launcher: run `python -m cepo.integrations.verl.main --config-name "$CONFIG"` with the paper setup.
# Environment: NGPUS (GPUs on this node, default 8), NNODES (default 1), MODEL_PATH, DATASET (geo3k or math: the
# scripts/prepare_$DATASET.py output in DATA_DIR, default geo3k), DATA_DIR (default ~/data/$DATASET), VAL_SPLITS
# (the validation parquet files in DATA_DIR, space-separated, default "test"), EXPERIMENT (run name); extra Hydra
# overrides come from "$@".
set -euo pipefail
: "${CONFIG:?set CONFIG to a method YAML name: grpo, rlsd, cepo, ..., or text/cepo, ...}"
NGPUS="${NGPUS:-8}"
NNODES="${NNODES:-1}"
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-VL-2B-Instruct}"
DATASET="${DATASET:-geo3k}"
DATA_DIR="${DATA_DIR:-$HOME/data/$DATASET}"
VAL_SPLITS="${VAL_SPLITS:-test}"
EXPERIMENT="${EXPERIMENT:-${CONFIG##*/}_$(basename "$MODEL_PATH")_$DATASET}"
PYTHON="${PYTHON:-python}"

if [[ ! -f "$DATA_DIR/train.parquet" ]]; then
  echo "no $DATA_DIR/train.parquet: run 'python scripts/prepare_$DATASET.py --local-dir $DATA_DIR' first" >&2
  exit 2
fi

read -r -a splits <<< "$VAL_SPLITS"
if [[ ${#splits[@]} -eq 1 ]]; then
  val_files="$DATA_DIR/${splits[0]}.parquet"
else  # a Hydra list, each path quoted (paths may hold spaces)
  val_files=""
  for split in "${splits[@]}"; do val_files+="${val_files:+,}'$DATA_DIR/$split.parquet'"; done
  val_files="[$val_files]"
fi

exec "$PYTHON" -m cepo.integrations.verl.main --config-name "$CONFIG" \
  actor_rollout_ref.model.path="$MODEL_PATH" \
  data.train_files="$DATA_DIR/train.parquet" \
  data.val_files="$val_files" \
  trainer.n_gpus_per_node="$NGPUS" \
  trainer.nnodes="$NNODES" \
  trainer.experiment_name="$EXPERIMENT" \
  "$@"
