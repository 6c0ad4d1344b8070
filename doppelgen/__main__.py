"""``python -m doppelgen`` runs the CLI."""

import sys

from doppelgen.cli import main

sys.exit(main())
