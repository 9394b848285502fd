#!/usr/bin/env bash
# Distributed test with torchrun and mmengine's pytorch launcher, as mmdet's
# tools/dist_test.sh.  NPROC is the number of processes per node: one per GPU,
# or CPU processes (gloo backend) on a machine without GPUs.
set -euo pipefail
usage="usage: bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py options]"
if [ $# -lt 3 ]; then echo "error: CONFIG, CHECKPOINT and NPROC are required; $usage" >&2; exit 2; fi
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
case "$NPROC" in ''|*[!0-9]*|0) echo "error: NPROC must be a positive integer, but got '$NPROC'; $usage" >&2; exit 2;; esac
[ -f "$CONFIG" ] || { echo "error: config file '$CONFIG' does not exist" >&2; exit 2; }
[ -f "$CHECKPOINT" ] || { echo "error: checkpoint '$CHECKPOINT' does not exist" >&2; exit 2; }
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# The project's .venv unless PYTHON names another interpreter.
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec "$PYTHON" -m torch.distributed.run \
    --nnodes=$NNODES --node_rank=$NODE_RANK --master_addr=$MASTER_ADDR \
    --nproc_per_node=$NPROC --master_port=$PORT \
    "$ROOT/tools/test.py" $CONFIG $CHECKPOINT --launcher pytorch ${@:4}
