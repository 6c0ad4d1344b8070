"""Rendering pair datasets: the synth builder, the jitted pair kernel, render_dataset, its
distributors, the shard runs they run, the encoding workers and the shard and manifest
writers.

Importing this package imports no JAX: the kernel and the shard runs import it when used.
"""
