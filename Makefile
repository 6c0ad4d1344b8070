# Everything runs inside a virtual environment the Makefile makes itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# JAX compiles each synth for tens of seconds; keep compiled kernels between runs.
export DOPPELGANGERS_CACHE ?= $(CURDIR)/.cache

.PHONY: install test fuzz demo bench probe-set clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The suite fuzzes the readers briefly (dataset manifests, sample JSON and audio, tar
# layouts, probe's CSV); this runs each target FUZZ_EXAMPLES times and prints
# hypothesis's statistics (inputs tried, time per input).
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	DOPPELGANGERS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz_readers.py tests/test_probe.py -k "fuzz" --hypothesis-show-statistics

demo: $(STAMP)
	$(BIN)/doppelgen render demo-shards --synth voice --delta 0.25 --shards 4 --pairs-per-shard 64 --batch-size 64
	$(BIN)/doppelgen verify demo-shards
	$(BIN)/doppeltrain fit demo-shards --run demo --runs-dir runs --model small --width 16 --epochs 2 --batch-size 32 --workers 2 --val-shards 1 --val-every 1

bench: $(STAMP)
	$(BIN)/python benchmarks/render.py
	$(BIN)/python benchmarks/render_ray.py
	$(BIN)/python benchmarks/train.py

# Recorded drum hits from a pinned Debian package, labelled by instrument, split by kit
# (benchmarks/probe_set.py; OUT/SOURCES.md says what it holds and under which licences).
probe-set: $(STAMP)
	$(BIN)/python benchmarks/probe_set.py .cache/probe-set

clean:
	rm -rf demo-shards runs/demo .pytest_cache
