#!/usr/bin/env bash
# Create or refresh .venv with the pinned OpenMMLab stack that works together today.
#
# Why each step is the way it is:
# - torch/torchvision come from PyPI's standard (CUDA) builds.  This machine's pip
#   prefers a local CPU-only torch wheel (PIP_FIND_LINKS), and PyPI's torchvision
#   does not run on it ("operator torchvision::nms does not exist"); the CUDA build
#   runs fine without a GPU.  So that one step ignores the local find-links.
# - mmcv 2.1.0 ships only as source: it is built once with its compiled ops
#   (~13 min on 2 cores) and the wheel is cached under a key that includes the
#   torch version it was built against; pip's own cache is keyed by source only.
# - mmdoconv's fused kernel composition (one C++ file) is compiled the same way,
#   once per torch / Python / source version, into ~/.cache/mmdoconv/ext
#   (about 1 min); without it the layer composes with pure PyTorch.
# - Every step is skipped when what it installs is already there, so a second
#   run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
PIP=("$PY" -m pip)

TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
MMCV_VERSION=2.1.0
WHEEL_CACHE="${MMDOCONV_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmdoconv/wheels}"

step() { printf '[setup %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if [ ! -x "$PY" ]; then
  step "creating $VENV"
  python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
fi
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "error: .venv must be Python 3.11, got $("$PY" -V)"; exit 1; }

if ! "$PY" -c 'import setuptools, wheel, sys; v = int(setuptools.__version__.split(".")[0]); sys.exit(v >= 81)' 2>/dev/null; then
  step "build tools (setuptools<81: mmcv's setup.py imports pkg_resources)"
  "${PIP[@]}" install -q -U pip 'setuptools<81' wheel ninja
fi

torch_ok() {
  "$PY" - <<PYEOF 2>/dev/null
import torch, torchvision
assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__
assert '+cpu' not in torch.__version__, 'local CPU-only wheel: torchvision cannot run on it'
assert torchvision.__version__.split('+')[0] == '$TORCHVISION_VERSION'
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]
PYEOF
}
if ! torch_ok; then
  step "torch==$TORCH_VERSION + torchvision==$TORCHVISION_VERSION from PyPI (CUDA build, ~3 GB, runs on CPU)"
  # Ignore the machine's find-links (CPU-only torch) and config for this step only.
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "${PIP[@]}" install \
    "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
  torch_ok || { echo "error: torchvision.ops.nms does not run after installing torch"; exit 1; }
fi

if ! "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
  TORCH_KEY="$("$PY" -c 'import torch; print(torch.__version__.replace("+", "_"))')"
  CACHE_DIR="$WHEEL_CACHE/torch-$TORCH_KEY"
  mkdir -p "$CACHE_DIR"
  if ! ls "$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    step "building mmcv==$MMCV_VERSION with ops against torch $TORCH_KEY (first time only, ~13 min on 2 cores)"
    LOG="$CACHE_DIR/build.log"
    # -v prints each compiled file; show a running count so the wait is visible.
    ( MMCV_WITH_OPS=1 MAX_JOBS="$(nproc)" FORCE_CUDA=0 "${PIP[@]}" wheel -v --no-deps \
        --no-build-isolation --no-binary mmcv "mmcv==$MMCV_VERSION" -w "$CACHE_DIR/tmp" >"$LOG" 2>&1 ) &
    build_pid=$!
    build_start=$(date +%s)
    while kill -0 "$build_pid" 2>/dev/null; do
      sleep 30
      # ninja prints [done/total] per compile step; estimate from the pace.
      progress=$(grep -oE '\[[0-9]+/[0-9]+\]' "$LOG" | tail -n 1 | tr -d '[]' || true)
      if [ -n "$progress" ]; then
        done_steps=${progress%/*}; total_steps=${progress#*/}
        elapsed=$(( $(date +%s) - build_start ))
        left=$(( elapsed * (total_steps - done_steps) / (done_steps > 0 ? done_steps : 1) / 60 ))
        step "  mmcv build: $done_steps/$total_steps compile steps, about $left min left"
      else
        step "  mmcv build: preparing (log: $LOG)"
      fi
    done
    wait "$build_pid" || { tail -30 "$LOG"; echo "error: mmcv build failed, full log in $LOG"; exit 1; }
    mv "$CACHE_DIR"/tmp/mmcv-"$MMCV_VERSION"-*.whl "$CACHE_DIR"/
    rm -rf "$CACHE_DIR/tmp"
  fi
  step "installing cached mmcv wheel from $CACHE_DIR"
  "${PIP[@]}" install -q --no-deps "$CACHE_DIR"/mmcv-"$MMCV_VERSION"-*.whl
fi

step "OpenMMLab stack, test and tool dependencies"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt"
"${PIP[@]}" install -q --no-deps -e "$ROOT"
if ! "$PY" -c 'import mmpose.models, xtcocotools._mask' 2>/dev/null; then
  # The pose census (workshop/census_zoo_pose.txt, tests/test_census.py).
  # mmpose declares chumpy, whose build imports pip and fails in pip's
  # isolated build env; only mmpose's SMPL tools use it, so mmpose goes in
  # without its declared dependencies and these are installed by hand.
  # xtcocotools' wheel is built against another numpy ABI ("numpy.dtype size
  # changed" at import): it is built here against the installed numpy.
  step "mmpose 1.3.2 (optional OpenMMLab extra; without chumpy), xtcocotools built against this numpy"
  "${PIP[@]}" install -q cython json_tricks munkres
  "${PIP[@]}" install -q --no-build-isolation --no-binary xtcocotools xtcocotools==1.14.3
  "${PIP[@]}" install -q --no-deps mmpose==1.3.2
fi
step "fused DO-Conv composition (C++ extension, cached; ~1 min the first time)"
EXT_LOG="$(mktemp)"
"$PY" -m mmdoconv.ops.build >"$EXT_LOG" 2>&1 || { cat "$EXT_LOG"; echo "error: the C++ extension did not build"; exit 1; }
grep -v "No CUDA runtime is found" "$EXT_LOG" || true
rm -f "$EXT_LOG"
"$PY" -c "import mmcv.ops, mmdet, mmseg, mmpretrain, mmpose.models, mmdoconv; print('environment ready:', 'torch', __import__('torch').__version__, 'mmcv', mmcv.__version__)"
