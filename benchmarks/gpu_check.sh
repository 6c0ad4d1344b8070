#!/usr/bin/env bash
# GPU evidence in one run that fits a time budget (benchmarks/gpu_check.py: env, render,
# compare, train, streamed-gpu, streamed-cpu; --ddp for a multi-GPU machine). Every phase
# prints its own JSON line as it finishes; each run writes into a fresh folder.
#
# On a GPU machine with the project installed: benchmarks/gpu_check.sh [--budget-s 500]
# On the lent GPU machine (no network; its python3 has torch and JAX with CUDA): fetch the
# wheels its image lacks here first, then carry .whl:
#   echo /.whl/ >> .git/info/exclude
#   python3 benchmarks/device_wheels.py download .whl && python3 benchmarks/device_wheels.py check .whl
# and run `benchmarks/gpu_check.sh` with carry [".whl"] and timeout_s 600.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  site=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
  export PYTHONPATH="$site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# The project's venv where there is one, else the machine's python3; $PYTHON overrides.
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
# Fail in seconds, naming the module, when a wheel is missing (exit 3).
"$PYTHON" benchmarks/gpu_check.py --check-imports
# It ends inside its --budget-s (default 500 s): each phase is killed when its share is spent.
exec "$PYTHON" benchmarks/gpu_check.py "$@"
