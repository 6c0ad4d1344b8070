# Everything runs inside a virtual environment the Makefile makes itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# JAX compiles each synth for tens of seconds; keep compiled kernels between runs.
export DOPPELGANGERS_CACHE ?= $(CURDIR)/.cache

.PHONY: install test test-fast lint fuzz demo bench learn probe-set eval clean

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
	DOPPELGANGERS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/format/test_fuzz_readers.py tests/use/test_probe.py tests/use/test_fuzz_models.py -k "fuzz" --hypothesis-show-statistics

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

# Evidence that training learns (experiments/learn.py): trains the small network on the CPU
# on frozen voice pairs at delta 0.05 (cached) and on fresh pairs rendered on the fly at the
# paper's 0.25 (with and without a delta ramp), and prints one JSON line: held-out recall,
# median rank and drum-probe accuracy, untrained vs trained (docs/learn.md).
learn: probe-set
	$(BIN)/python -m experiments.learn --probe-set .cache/probe-set

# HEAR's downstream protocol (docs/eval.md) on two tiny tasks made from the drum probe set
# (benchmarks/eval_tasks.py: which instrument, 5 kit folds at 48 kHz; which instruments in
# a layered hit, multilabel at 44.1 kHz), for the make demo model and its baselines.
EVAL_MODEL ?= runs/demo/checkpoints/latest.pt
EVAL_OUT ?= runs/demo/eval
eval: probe-set $(EVAL_MODEL)
	$(BIN)/python -m benchmarks.eval_tasks .cache/probe-set .cache/eval-tasks
	$(BIN)/doppeltrain eval $(EVAL_MODEL) .cache/eval-tasks/drum_kits .cache/eval-tasks/drum_layers --out $(EVAL_OUT)

runs/demo/checkpoints/latest.pt:
	$(MAKE) demo

clean:
	rm -rf demo-shards runs/demo .pytest_cache
