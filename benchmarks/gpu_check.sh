#!/usr/bin/env bash
# GPU evidence for issue 9 in one run of at most 8 minutes: render on the GPU and compare
# with a CPU render, then train the paper's ResNet-18 recipe (batch 768, bf16) and print
# pairs/s, the data-wait fraction and held-out recall@1 at the start and the end.
#
# On a GPU machine with the project installed: benchmarks/gpu_check.sh
# On the lent H200 (no network; its python3 has torch, JAX with CUDA, flax, typer...):
# fetch the missing packages as wheels here first, then carry .whl:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl synthax==0.2.2 webdataset braceexpand \
#     soundfile pyroomacoustics
# and run `benchmarks/gpu_check.sh` with carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The project's venv where there is one, else the machine's python3; $PYTHON overrides.
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
