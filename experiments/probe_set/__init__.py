"""The drum probe set: recorded drum hits from a pinned Debian package, labelled by
instrument and grouped by kit (``make probe-set``; :mod:`experiments.probe_set.build`)."""
