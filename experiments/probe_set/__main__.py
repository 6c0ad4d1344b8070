import sys

from experiments.probe_set.build import main

sys.exit(main())
