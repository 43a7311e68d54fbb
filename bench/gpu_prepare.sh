#!/usr/bin/env bash
# What bench/gpu.sh needs on a lent GPU machine that cannot install anything: the pure-Python
# and compiled wheels the engine imports beyond torch/transformers/accelerate (unpacked, one
# folder per Python version), and the smollm2 tokenizer (bench.lifelong_gpu's vocabulary).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
dest=.amend/gpu
mkdir -p "$dest/tokenizer"
home=${AMEND_HOME:-$HOME/.cache/amend}
cp "$home"/models/smollm2/tokenizer*.json "$home"/models/smollm2/chat_template.jinja "$dest/tokenizer/" 2>/dev/null || {
    echo "convert smollm2 first (make test, or: $PY -c 'from runtime import load_model; load_model(\"smollm2\")')" >&2; exit 1; }
for v in 3.10 3.11 3.12 3.13; do
    tag=cp${v/./}
    rm -rf "$dest/wheels/$tag" && mkdir -p "$dest/wheels/$tag" "$dest/download/$tag"
    "$PY" -m pip download -q --only-binary=:all: --python-version "$v" --platform manylinux2014_x86_64 \
        -d "$dest/download/$tag" "pydantic>=2.7,<3"
    for wheel in "$dest/download/$tag"/*.whl; do "$PY" -m zipfile -e "$wheel" "$dest/wheels/$tag"; done
done
rm -rf "$dest/download"
du -sh "$dest"
