"""Experiments that answer a research question with this project, importable by the tests:
``learn`` (does training learn at CPU scale? ``make learn``) and ``probe_set`` (the recorded
drum hits it probes with, ``make probe-set``)."""
