"""What identifies the platform a render ran on, so that "the same platform" means it.

A render's bytes depend on more than JAX's backend and device kind: XLA:CPU compiles for
the instruction set it finds (or the one ``XLA_FLAGS=--xla_cpu_max_isa=...`` caps it at),
and the pair parameters are always drawn by the CPU backend, so the CPU's instruction set
matters on a GPU machine too. Measured on one AVX2 machine (docs/publishing.md): the same
recipe rendered with XLA capped at SSE4.2 changed every clip and ~11% of the parameter
values (by float32 rounding), while both used to be recorded as platform ``cpu``.

The record (``manifest.json``'s ``record.platform``) holds the backend, device kind and
count, the machine architecture, the CPU instruction-set level XLA compiles for and the
matmul precision; :func:`same_platform` compares all of them but the device count.
"""

from __future__ import annotations

import os
import platform as _platform
import re
from pathlib import Path

# XLA:CPU's instruction-set levels, oldest first: the values ``--xla_cpu_max_isa`` takes
# (jaxlib's flag help lists these), each with the /proc/cpuinfo flags that mean the host
# has it.
X86_ISA_LEVELS = (
    ("SSE4_2", ("sse4_2",)),
    ("AVX", ("avx",)),
    ("AVX2", ("avx2", "fma")),
    ("AVX512", ("avx512f",)),
    ("AVX512_VNNI", ("avx512_vnni",)),
    ("AVX512_BF16", ("avx512_bf16",)),
    ("AMX", ("amx_bf16", "amx_int8")),
    ("AMX_FP16", ("amx_fp16",)),
)
# What a platform record must agree on for a re-render to reproduce bytes.
IDENTITY_KEYS = ("backend", "device_kind", "machine", "cpu_isa", "matmul_precision")


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The host CPU's feature flags (Linux), None where they cannot be read."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else None


def isa_cap(xla_flags: str | None = None) -> str | None:
    """The ``--xla_cpu_max_isa`` value in ``XLA_FLAGS`` (upper case), None without one."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    found = re.findall(r"--xla_cpu_max_isa=([A-Za-z0-9_]+)", flags)
    return found[-1].upper() if found else None


def xla_cpu_isa(flags: set[str] | None = None, machine: str | None = None, xla_flags: str | None = None) -> str:
    """The instruction-set level XLA:CPU compiles for here: the newest one the host has,
    capped by ``--xla_cpu_max_isa``. On other architectures than x86-64, the architecture
    and its vector extensions (e.g. ``aarch64 asimd sve``); ``unknown`` where the host's
    features cannot be read (then no record counts as the same platform)."""
    machine = (machine or _platform.machine()).lower()
    flags = _cpu_flags() if flags is None else flags
    if flags is None:
        return "unknown"
    if machine in ("x86_64", "amd64"):
        names = [name for name, _ in X86_ISA_LEVELS]
        best = "none"
        for name, needs in X86_ISA_LEVELS:  # each level builds on the ones below it
            if not all(flag in flags for flag in needs):
                break
            best = name
        cap = isa_cap(xla_flags)
        if cap in names and best in names and names.index(cap) < names.index(best):
            best = cap
        return best
    vector = sorted(flag for flag in flags if flag in ("asimd", "sve", "sve2", "sme"))
    return " ".join([machine, *vector])


def render_platform() -> dict:
    """The platform record of this process's renders (initialises JAX's backends)."""
    import jax

    from doppelgen.render.jax_runtime import MATMUL_PRECISION

    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "machine": _platform.machine().lower(),
        "cpu_isa": xla_cpu_isa(),
        "matmul_precision": MATMUL_PRECISION,
    }


def same_platform(record: dict, ours: dict) -> bool:
    """Whether two platform records name the same platform: every key of
    :data:`IDENTITY_KEYS` present in both and equal. A record written before a key was
    recorded is never the same platform (bytes are then compared within tolerance)."""
    if not isinstance(record, dict) or not isinstance(ours, dict):
        return False
    return all(key in record and key in ours and record[key] == ours[key] for key in IDENTITY_KEYS) and ours.get("cpu_isa") != "unknown"
