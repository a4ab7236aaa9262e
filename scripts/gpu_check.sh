#!/usr/bin/env bash
# GPU checks on a CUDA machine: profile one layer each of ViT-5B, Llama3-8B and DiT-5B (TP 1, bf16)
# into a calibration file, then run the CUDA tests (tiny models on the GPU equal the CPU; pipelined
# training on the GPU equals plain training, also at TP 2 x PP 2 and PP 2 x DP 2 with FSDP on the
# GPUs there are: NCCL with a GPU per rank, else gloo staging through host memory). Usage: bash scripts/gpu_check.sh [OUTDIR]
# SKIP_PROFILE=1 runs the tests only. RUNTIME_BENCH=1 also runs `dip bench runtime --json` on the
# machine's CPUs (gloo, 2 ranks with cores to spare for the communication threads) into
# OUTDIR/bench_runtime.json. Uses the current python3 (torch with CUDA, numpy, scipy, numba, highspy, pytest); DIP from src/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$out/env.txt"
import torch, numpy, scipy, numba
print("torch", torch.__version__, "cuda", torch.version.cuda, "numpy", numpy.__version__, "scipy", scipy.__version__,
      "numba", numba.__version__)
print("device", torch.cuda.get_device_name(), "x", torch.cuda.device_count())
PY
name=$(python3 -c "import torch; n = torch.cuda.get_device_name(); print(next((k for k in ('H200', 'H100', 'A100', 'H800', 'H20') if k in n), 'gpu'))")
lower=$(echo "$name" | tr 'A-Z' 'a-z')
status=0
[ -n "${SKIP_PROFILE:-}" ] || timeout 300 python3 -m dip profile --device cuda --modules ViT-5B Llama3-8B DiT-5B --name "$name" \
  --out "$out/$lower.json" 2>&1 | tee "$out/profile.log" || status=1
timeout 1500 python3 -m pytest -q -p no:cacheprovider -m cuda -o addopts="" tests/test_cuda.py 2>&1 \
  | tee "$out/pytest.log" || status=1
if [ -n "${RUNTIME_BENCH:-}" ]; then
  timeout 600 python3 -m dip bench runtime --json >"$out/bench_runtime.json" 2>"$out/bench_runtime.log" || status=1
fi
exit $status
