"""Rendering pair datasets: the synths, the jitted pair kernel, the render loop, its
distributors, the encoding workers and the shard and manifest writers.

Importing this package imports no JAX: the kernel and the loop import it when used.
"""
