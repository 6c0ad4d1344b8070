"""``python -m doppeltrain`` (and ``torchrun -m doppeltrain``) run the CLI."""

import sys

from doppeltrain.cli import main

sys.exit(main())
