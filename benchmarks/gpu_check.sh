#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) as one command with a hard time limit, its log beside its results.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options]     # e.g. bash benchmarks/gpu_check.sh runs/gpu_check
#
# A machine without network whose Python lacks some of trl, datasets, dill, multiprocess, mathruler, pylatexenc:
# put their wheels in .whl/ first (python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl
# trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 mathruler==0.1.0 pylatexenc==2.11); this script
# installs them into /tmp/site. GPU_CHECK_BUDGET_S (default 540) is the check's own budget; the process is killed
# 50 s after it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [gpu_check.py options]}
shift
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
budget=${GPU_CHECK_BUDGET_S:-540}
mkdir -p "$out"
timeout $((${budget%.*} + 50)) python3 benchmarks/gpu_check.py --out "$out" --budget-s "$budget" "$@" 2>&1 \
  | tee "$out/gpu_check.log"
