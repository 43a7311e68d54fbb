#!/usr/bin/env bash
# Every GPU benchmark the issues ask for, in one call on a lent machine (device tool), < 8 minutes.
#
# Before the call, on this machine (network to PyPI):  bash bench/gpu_prepare.sh
#   -> .amend/gpu/wheels (pydantic & co. unpacked per Python version) and .amend/gpu/tokenizer
# The call:  run(command="bash bench/gpu.sh", carry=[".amend/gpu"], timeout_s=540)
# Results land in $OUT (one JSON line per benchmark) and are printed.
#
#   1. lifelong editing at the production shape (issue "Lifelong editing"): sequential ROME edits
#      with the preserving update on a Llama-3-8B-shaped random bf16 model, per-edit time, peak
#      memory and the solve's time with a history of 0 / 1,000 / 5,000 keys (bench.lifelong_gpu)
#   2. one ROME edit's time at that shape, the engine alone (bench.edit_speed --gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
version=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
if [ -d ".amend/gpu/wheels/$version" ]; then
    export PYTHONPATH=".amend/gpu/wheels/$version:${PYTHONPATH:-}"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" - <<'PY'
import importlib, sys
missing = [m for m in ("torch", "transformers", "pydantic", "safetensors", "filelock", "tqdm") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing on this machine: {missing}; run bench/gpu_prepare.sh here and carry .amend/gpu")
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
PY
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout 420 "$PY" -m bench.lifelong_gpu --edits 150 --tokenizer .amend/gpu/tokenizer | tee "$OUT/lifelong_gpu.json"
timeout 90 "$PY" -m bench.edit_speed --gpu | tee "$OUT/edit_speed_gpu.json"
