"""Benchmarks (``make bench``): each prints one JSON line of ratios measured side by side in one run."""
