#!/usr/bin/env bash
# The GPU check that fits in minutes, from the repository root, on a machine with one CUDA GPU:
#
#     bash benchmarks/gpu_check.sh              # every step, results in benchmarks/results/gpu-<device>/check/
#     bash benchmarks/gpu_check.sh --dry-run    # what it would measure, and what is missing here
#     PYTHON=/path/to/python bash benchmarks/gpu_check.sh --only parity,model
#
# Steps and their time budgets (each step runs in its own process and is stopped at its
# budget; 460 s in all, under 8 minutes): preflight 15 s, parity 80 s (real I3D, real clips,
# CUDA fp16/bf16 against CPU fp32), model 90 s (R(2+1)D-18/34, 8 and 32 frames, batch
# 1/8/32), model_i3d 45 s, graphs 60 s (CUDA graphs, torch.compile), runtimes 90 s
# (onnxruntime CUDA, TensorRT; "not measured" without them), score 80 s (1-16 decode workers).
# `--dry-run` prints the same list from benchmarks/gpu_check.py, which holds the logic.
#
# Needs:
#   - a Python with a CUDA build of torch (PYTHON=..., default python3) that sees the GPU;
#   - PyAV (`pip install 'av>=12,<19'`). Without internet, bring the wheel: where pip works,
#       pip download --no-deps --only-binary=:all: --python-version 3.12 \
#           --platform manylinux_2_28_x86_64 -d wheels av==18.1.0
#     copy wheels/ over, then `pip install --no-deps --target /tmp/site wheels/av-*.whl` and
#     `export PYTHONPATH=/tmp/site` before running this;
#   - for parity, model_i3d and the I3D rows of graphs: the real Kinetics-400 I3D
#     (`r21d download i3d-kinetics400`, or copy ~/.cache/r21d/i3d-kinetics400.safetensors over
#     and set R21D_I3D=PATH);
#   - for parity: the real clips (R21D_VIDEOS=DIR or --videos DIR; default ../shared/videos).
# What is missing stops the check at once, with one line per missing thing.
# For the whole suite (far longer) use benchmarks/gpu_run.sh.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import r21d.benchmarks.gpu_check" 2>/dev/null; then
    echo "gpu_check.sh: installing r21d (editable, no dependencies) into $PYTHON" >&2
    if ! "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . >&2; then
        echo "gpu_check.sh: could not install r21d into $PYTHON; install it there" \
             "(pip install --no-deps -e .) or set PYTHON to a Python that has it" >&2
        exit 2
    fi
fi

case " $* " in
    *" --dry-run "*) ;;
    *)
        if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
            OUT=$("$PYTHON" -c "from r21d.benchmarks.machine import device_label as d; \
from r21d.benchmarks.run_all import DEFAULT_OUT; print(DEFAULT_OUT / ('gpu-' + d('cuda:0')) / 'check')")
            mkdir -p "$OUT"
            if command -v nvidia-smi >/dev/null; then
                nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
            fi
        fi
        ;;
esac

exec "$PYTHON" -m r21d.benchmarks.gpu_check "$@"
