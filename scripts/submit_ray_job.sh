#!/usr/bin/env bash
# Submit a training run to a running Ray cluster with `ray job submit`; docs/cluster.md has the whole flow.
#
#   RAY_ADDRESS=http://head:8265 DATA_DIR=/shared/geo3k OUTPUT_DIR=/shared/runs/cepo NNODES=2 \
#     bash scripts/submit_ray_job.sh [--wait] cepo [overrides]              # verl (the default engine)
#   ENGINE=trl RAY_ADDRESS=... DATA_DIR=... OUTPUT_DIR=... bash scripts/submit_ray_job.sh cepo [overrides]
#
# The method is the name of a YAML in cepo/configs (grpo | rlsd | cepo | opsd | sdpo | conspo); overrides are Hydra-style keys of that
# config and work on both engines. The job runs
#   ENGINE=verl: python -m cepo.integrations.verl.main --config-name METHOD ...  (verl places its GPU workers)
#   ENGINE=trl:  python -m cepo.cli train --config cepo/configs/METHOD.yaml ...  (one process, one GPU or CPU)
# Environment:
#   RAY_ADDRESS  the head's dashboard/job server, e.g. http://head:8265 (required)
#   DATA_DIR     directory holding train.parquet and test.parquet, an absolute path every node can read, or a URI
#                (required; checked here unless it is a URI or CHECK_DATA=0, for a machine that does not mount it)
#   OUTPUT_DIR   run directory (trainer.default_local_dir): an absolute path on storage the nodes share; required
#                unless a trainer.default_local_dir=... override is given (a relative one would land in the job's
#                temporary copy of this repository, which Ray deletes)
#   MODEL_PATH   hub id or absolute path (default Qwen/Qwen3-VL-2B-Instruct)
#   NGPUS        verl: GPUs per node (default 8); trl: 1 (default) reserves a GPU for the job, 0 runs it on CPU
#   NNODES       verl: number of nodes (default 1)
#   CEPO_WAIT_FOR_GPUS_S  verl: before creating workers the job checks that the cluster has the GPUs the config
#                needs; it waits up to this many seconds for them (nodes joining, GPUs busy; default 300), then
#                fails with one line naming the GPU count and the fix
#   PYTHON       interpreter on the nodes (default: python, the first on the PATH that `ray start` ran with)
#   SUBMISSION_ID  job id (default cepo-ENGINE-METHOD-DATE-RANDOM)
#   WAIT=1 or --wait  follow the logs until the job ends; exit 0 only if it SUCCEEDED
# The runtime env uploads this repository (without .venv, .git, runs, build, caches, ...) as the job's working
# dir: the job imports the submitted `cepo` from it, and Ray puts it on every worker's PYTHONPATH. cepo's
# dependencies (`pip install -e ".[gpu]"` for verl, ".[trl]" for TRL) must already be installed on every node.
set -euo pipefail

die() {
  echo "submit_ray_job.sh: $*" >&2
  exit 2
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USAGE="usage: [ENGINE=verl|trl] bash scripts/submit_ray_job.sh [--wait] METHOD [overrides]"
WAIT="${WAIT:-0}"
while [[ $# -gt 0 && "$1" == -* ]]; do
  case "$1" in
    --wait) WAIT=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1; $USAGE" ;;
  esac
  shift
done
[[ $# -ge 1 ]] || die "no method given; $USAGE"
METHOD="$1"
shift

command -v ray > /dev/null || die "no 'ray' command: activate the environment that has cepo installed (ray[default])"
[[ -n "${RAY_ADDRESS:-}" ]] || die "set RAY_ADDRESS to the head's job server, e.g. RAY_ADDRESS=http://head:8265"
ENGINE="${ENGINE:-verl}"
[[ "$ENGINE" == verl || "$ENGINE" == trl ]] || die "ENGINE must be verl or trl, got '$ENGINE'"
METHODS=()
for yaml in "$REPO"/cepo/configs/*.yaml; do
  name="$(basename "$yaml" .yaml)"
  [[ "$name" == paper_base ]] || METHODS+=("$name")
done
[[ " ${METHODS[*]} " == *" $METHOD "* ]] || die "unknown method '$METHOD'; one of: ${METHODS[*]} (cepo/configs)"

DATA_DIR="${DATA_DIR:-}"
[[ -n "$DATA_DIR" ]] || die "set DATA_DIR to a directory with train.parquet/test.parquet that every node can read"
if [[ "$DATA_DIR" != *://* ]]; then
  [[ "$DATA_DIR" == /* ]] || die "DATA_DIR must be an absolute path (the job runs in a temporary directory): $DATA_DIR"
  if [[ "${CHECK_DATA:-1}" != 0 && ! -f "$DATA_DIR/train.parquet" ]]; then
    die "no $DATA_DIR/train.parquet (run scripts/prepare_geo3k.py --local-dir $DATA_DIR, or CHECK_DATA=0 if this machine does not mount it)"
  fi
fi
OVERRIDES=(
  actor_rollout_ref.model.path="${MODEL_PATH:-Qwen/Qwen3-VL-2B-Instruct}"
  data.train_files="$DATA_DIR/train.parquet"
  data.val_files="$DATA_DIR/test.parquet"
)
OUTPUT_DIR="${OUTPUT_DIR:-}"
if [[ -n "$OUTPUT_DIR" ]]; then
  [[ "$OUTPUT_DIR" == /* ]] || die "OUTPUT_DIR must be an absolute path on storage the nodes share: $OUTPUT_DIR"
  OVERRIDES+=(trainer.default_local_dir="$OUTPUT_DIR")
elif [[ " $* " != *" trainer.default_local_dir="* ]]; then
  die "set OUTPUT_DIR to an absolute run directory on shared storage (the default one is inside the job's temporary working dir)"
fi

PYTHON="${PYTHON:-python}"
SUBMIT_OPTS=()
ENV_VARS="TOKENIZERS_PARALLELISM: \"true\", PYTHONUNBUFFERED: \"1\""
if [[ "$ENGINE" == verl ]]; then
  NGPUS="${NGPUS:-8}"
  OVERRIDES+=(trainer.n_gpus_per_node="$NGPUS" trainer.nnodes="${NNODES:-1}")
  # the job checks the cluster's GPUs before any worker and waits this long for joining nodes / busy GPUs
  [[ -z "${CEPO_WAIT_FOR_GPUS_S:-}" ]] || ENV_VARS+=", CEPO_WAIT_FOR_GPUS_S: \"$CEPO_WAIT_FOR_GPUS_S\""
  ENTRYPOINT=("$PYTHON" -m cepo.integrations.verl.main --config-name "$METHOD")
else
  NGPUS="${NGPUS:-1}"
  case "$NGPUS" in
    1) SUBMIT_OPTS+=(--entrypoint-num-gpus=1) ;;  # Ray runs the job on a node with a free GPU and pins it
    0) ENV_VARS+=", CUDA_VISIBLE_DEVICES: \"\"" ;;
    *) die "ENGINE=trl trains in one process: NGPUS must be 1 (one GPU) or 0 (CPU), got '$NGPUS'" ;;
  esac
  ENTRYPOINT=("$PYTHON" -m cepo.cli train --config "cepo/configs/$METHOD.yaml")
fi
SUBMISSION_ID="${SUBMISSION_ID:-cepo-$ENGINE-$METHOD-$(date +%Y%m%d-%H%M%S)-$RANDOM}"

# Ray uploads working_dir as one package of at most 512 MiB (RAY_max_grpc_message_size). It also honours
# .gitignore/.rayignore, but these excludes (gitignore syntax; "/x" = x at the top) hold on their own, for any Ray
# version and with RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1: virtualenvs, run outputs, build artefacts, caches, weights.
RUNTIME_ENV="$(mktemp --suffix=.yaml)"
trap 'rm -f "$RUNTIME_ENV"' EXIT
cat > "$RUNTIME_ENV" <<YAML
working_dir: "$REPO"
excludes: [".git", ".venv", "/venv", "/env", "/runs", "/outputs", "/checkpoints", "/wandb", "/build", "/dist",
           "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis",
           "*.safetensors", "*.bin", "*.pt", "*.ckpt"]
env_vars: {$ENV_VARS}
YAML

if ! ray job submit --address="$RAY_ADDRESS" --submission-id="$SUBMISSION_ID" --runtime-env="$RUNTIME_ENV" \
    --no-wait "${SUBMIT_OPTS[@]}" -- "${ENTRYPOINT[@]}" "${OVERRIDES[@]}" "$@"; then
  echo "submit_ray_job.sh: ray job submit to $RAY_ADDRESS failed (its message is above)" >&2
  exit 1
fi

cat <<EOF
submission id: $SUBMISSION_ID  (ENGINE=$ENGINE, method $METHOD, $RAY_ADDRESS)
  follow the logs: ray job logs -f $SUBMISSION_ID --address $RAY_ADDRESS
  status:          ray job status $SUBMISSION_ID --address $RAY_ADDRESS
  stop:            ray job stop $SUBMISSION_ID --address $RAY_ADDRESS
EOF
[[ "$WAIT" == 1 ]] || exit 0

ray job logs -f "$SUBMISSION_ID" --address="$RAY_ADDRESS"  # returns when the job ends
STATUS="$(ray job status "$SUBMISSION_ID" --address="$RAY_ADDRESS" --log-color=false 2>&1)" || true
if [[ "$STATUS" == *"Job '$SUBMISSION_ID' succeeded"* ]]; then
  echo "job $SUBMISSION_ID: SUCCEEDED"
else
  echo "job $SUBMISSION_ID did not succeed: ray job status $SUBMISSION_ID --address $RAY_ADDRESS" >&2
  exit 1
fi
