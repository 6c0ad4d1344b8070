"""heareval's prediction runner with a global seed other than its hard-coded 42.

Run with the Python of heareval's environment (docs/eval.md), not this project's:

    TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 HEAREVAL_PYTHON benchmarks/heareval_seeded_runner.py SEED TASK_DIR... [runner options]

heareval calls ``seed_everything(42)`` before shuffling its grid and training; this swaps
only that seed, so with SEED 42 it is exactly ``python -m heareval.predictions.runner``.
One seed says little on a small task (a few dozen validation clips choose the grid point):
``benchmarks/heareval_crosscheck.py`` compares means over seeds on both sides.
"""

import sys

import heareval.predictions.task_predictions as task_predictions
import pytorch_lightning as pl
from heareval.predictions.runner import runner

seed = int(sys.argv[1])
task_predictions.seed_everything = lambda _seed, workers=False: pl.seed_everything(seed, workers=workers)
runner.main(args=sys.argv[2:], standalone_mode=False)
