#!/usr/bin/env bash
# The device checks (benchmarks/gpu.py), run on the GPU machine from the repo
# root with .gpu/ and .whl/ carried; results in $OUT/gpu.json.
set -u
pip() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$@"; }
pip --target /tmp/site .whl/*.whl || exit 1
pip --target /tmp/ctgan .whl/ctgan/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 benchmarks/gpu.py run --device cuda --out "$OUT" --ctgan-path /tmp/ctgan
