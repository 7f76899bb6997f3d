#!/usr/bin/env bash
# Submit a training run to a running Ray cluster (`ray job submit`), shipping this package to the workers.
#   RAY_ADDRESS=http://head:8265 NGPUS=8 NNODES=2 MODEL_PATH=... DATA_DIR=/shared/geo3k \
#     bash scripts/submit_ray_job.sh cepo [hydra overrides]
# The first argument is the method config (grpo | rlsd | cepo); DATA_DIR and MODEL_PATH must be readable on
# every node. The runtime env uploads this repository as the working dir and ships the `cepo` package (with its
# method YAMLs in cepo/configs) as a py_module, importable by the driver and every worker. cepo's dependencies
# (verl, vLLM, flash-attn, ... = `pip install -e ".[gpu]"`) must already be installed in the nodes' environment.
set -euo pipefail
: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray dashboard address, e.g. http://head:8265}"
METHOD="${1:?usage: submit_ray_job.sh grpo|rlsd|cepo [hydra overrides]}"
shift
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NGPUS="${NGPUS:-8}"
NNODES="${NNODES:-1}"
MODEL_PATH="${MODEL_PATH:-Qwen/Qwen3-VL-2B-Instruct}"
DATA_DIR="${DATA_DIR:?set DATA_DIR to a directory with train.parquet/test.parquet readable on all nodes}"
RUNTIME_ENV="$(mktemp --suffix=.yaml)"
trap 'rm -f "$RUNTIME_ENV"' EXIT
cat > "$RUNTIME_ENV" <<YAML
working_dir: "$REPO"
excludes: [".git", "checkpoints", "outputs", "wandb"]
py_modules: ["$REPO/cepo"]
env_vars:
  TOKENIZERS_PARALLELISM: "true"
YAML
exec ray job submit --address="$RAY_ADDRESS" --runtime-env="$RUNTIME_ENV" --no-wait -- \
  python -m cepo.integrations.verl.main --config-name "$METHOD" \
  actor_rollout_ref.model.path="$MODEL_PATH" \
  data.train_files="$DATA_DIR/train.parquet" \
  data.val_files="$DATA_DIR/test.parquet" \
  trainer.n_gpus_per_node="$NGPUS" \
  trainer.nnodes="$NNODES" \
  "$@"
