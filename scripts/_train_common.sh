#!/usr/bin/env bash
# Shared launcher: run `python -m cepo.integrations.verl.main --config-name "$CONFIG"` with the paper setup.
# Environment: NGPUS (GPUs on this node, default 8), NNODES (default 1), MODEL_PATH, DATASET (geo3k or math: the
# scripts/prepare_$DATASET.py output in DATA_DIR, default geo3k), DATA_DIR (default ~/data/$DATASET), VAL_SPLITS
# (the validation parquet files in DATA_DIR, space-separated, default "test"), EXPERIMENT (run name); extra Hydra
# overrides come from "$@".
set -euo pipefail
for arg in "$@"; do
  if [[ "$arg" == "--help" || "$arg" == "-h" ]]; then
    cat <<EOF
usage: [NGPUS=8] [NNODES=1] [MODEL_PATH=...] [DATASET=geo3k|math] [DATA_DIR=...] [VAL_SPLITS=test] [EXPERIMENT=name]
       bash scripts/train_<method>_<model>.sh [Hydra overrides key=value ...]
Trains configs/${CONFIG:-<method>}.yaml on verl (python -m cepo.integrations.verl.main --config-name ${CONFIG:-<method>})
with the model, data and GPU count from the environment:
  NGPUS       GPUs on this node (now: ${NGPUS:-8})
  NNODES      nodes (now: ${NNODES:-1})
  MODEL_PATH  hub id or local checkpoint (now: ${MODEL_PATH:-Qwen/Qwen3-VL-2B-Instruct})
  DATASET     geo3k or math; DATA_DIR holds the output of scripts/prepare_<DATASET>.py (now: ${DATASET:-geo3k})
  DATA_DIR    folder with train.parquet and the validation splits (now: ${DATA_DIR:-\$HOME/data/${DATASET:-geo3k}})
  VAL_SPLITS  validation parquet names in DATA_DIR, space-separated (now: ${VAL_SPLITS:-test})
  EXPERIMENT  run name, trainer.experiment_name
e.g. NGPUS=8 bash scripts/train_cepo_qwen3vl_2b.sh cepo.lam0=0.3 trainer.logger='[console,wandb]'
Check the node first with: cepo doctor. Docs: docs/verl.md, docs/cluster.md.
EOF
    exit 0
  fi
done
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
