#!/usr/bin/env bash
# The whole benchmark suite on a GPU machine, in one call, from the repository root:
#
#     bash benchmarks/gpu_run.sh                 # every benchmark on cuda:0
#     bash benchmarks/gpu_run.sh --quick         # the tiny smoke run, on the GPU (into quick/)
#     PYTHON=/path/to/python bash benchmarks/gpu_run.sh --only model,parity
#
# Needs a Python with a CUDA build of torch (and optionally onnxruntime-gpu, tensorrt: the
# variants they enable are measured when present and listed as "not measured" otherwise).
# Results go to benchmarks/results/gpu-<device>/ (index.md, <benchmark>.json/.md, PNG plots),
# plus nvidia-smi.txt describing the GPU and driver. Extra arguments go to `r21d bench all`.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda:0}

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_run.sh: $PYTHON has no CUDA-enabled torch (torch.cuda.is_available() is False);" \
         "set PYTHON to one that does" >&2
    exit 2
fi
if ! "$PYTHON" -c "import r21d.benchmarks.cli" 2>/dev/null; then
    echo "gpu_run.sh: installing r21d (editable, no dependencies) into $PYTHON" >&2
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e .
fi

QUICK=False
for arg in "$@"; do [ "$arg" = "--quick" ] && QUICK=True; done
OUT=$("$PYTHON" -c "from r21d.benchmarks.run_all import default_out as d; print(d('$DEVICE', $QUICK))")
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi

echo "gpu_run.sh: results in $OUT" >&2
exec "$PYTHON" -m r21d.cli bench all --device "$DEVICE" --out "$OUT" "$@"
