# Everything runs inside a virtual environment the Makefile makes itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# JAX compiles each synth for tens of seconds; keep compiled kernels between runs.
export DOPPELGANGERS_CACHE ?= $(CURDIR)/.cache

.PHONY: install test test-fast lint fuzz demo bench learn probe-set clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

# Tests run in TEST_WORKERS processes (pytest-xdist); tests that start a Ray cluster share
# one of them (--dist loadgroup), since two local clusters on one machine contend.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: $(STAMP)
	$(PYTEST) --durations=25 tests

# The suite without the tests marked slow: an answer in a few minutes while developing.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .

# The suite fuzzes the readers briefly (dataset manifests, sample JSON and audio, tar
# layouts, probe's CSV, and the model loaders: a checkpoint's config, tensors and bytes, a
# model folder's config.json and safetensors header, under a memory cap); this runs each
# target FUZZ_EXAMPLES times and prints hypothesis's statistics (inputs tried, time per
# input, which checks the inputs reached).
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP)
	DOPPELGANGERS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz_readers.py tests/test_probe.py tests/test_fuzz_models.py -k "fuzz" --hypothesis-show-statistics

# Renders 9 shards of 512 voice pairs at delta 0.05 (views close enough for a CPU to learn
# them in minutes), holds one shard out (512 pairs: one retrieval group) and trains the
# small network with the fastest-learning CPU setting that experiments/learn.py found. fit
# ends by printing held-out recall@1 of the untrained and the trained network side by side.
demo: $(STAMP)
	$(BIN)/doppelgen render demo-shards --synth voice --delta 0.05 --shards 9 --pairs-per-shard 512 --overwrite
	$(BIN)/doppelgen verify demo-shards
	rm -rf runs/demo
	$(BIN)/doppeltrain fit demo-shards --run demo --runs-dir runs --model small --width 8 --batch-size 128 \
		--optimizer adam --lr 0.003 --augment none --epochs 2 --steps-per-epoch 100 --workers 1 \
		--val-shards 1 --val-every 1

# The augmentation's aten ops and host syncs per view of 768 clips on a GPU's path
# (target <= 1500 ops, <= 3 syncs), counted on the CPU (benchmarks/augment_ops.py).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.render
	$(BIN)/python -m benchmarks.render_ray
	$(BIN)/python -m benchmarks.train
	$(BIN)/python -m benchmarks.augment_ops
	$(BIN)/python -m benchmarks.train_streamed

# Recorded drum hits from a pinned Debian package, labelled by instrument, split by kit
# (experiments/probe_set/; OUT/SOURCES.md says what it holds and under which licences).
probe-set: $(STAMP)
	$(BIN)/python -m experiments.probe_set .cache/probe-set

# Evidence that training learns (experiments/learn.py): renders voice pairs at delta 0.05
# and 0.25 (cached), trains the small network for a fixed number of steps on the CPU and
# prints one JSON line: held-out recall@1 and drum-probe accuracy, untrained vs trained.
learn: probe-set
	$(BIN)/python -m experiments.learn --probe-set .cache/probe-set

clean:
	rm -rf demo-shards runs/demo .pytest_cache
