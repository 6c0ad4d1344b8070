"""The synth registry: every synth a recipe may name, one row each, without importing JAX.

To add a synth, add its row to ``SYNTHS``: the SynthAX class that renders it, the
constructor arguments a recipe may set with their defaults, and their bounds. The
recipe's checks (``doppelgen.recipe``), the renderer (``render.synths.build_synth``) and
the command line's ``--synth`` and ``--synth-arg`` all read this table, so the row is the
whole change (plus a test and the docs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from doppelgen.format import is_whole_number, shown

# Oscillators of each kind in a parametric synth (the paper's has 6 in all): each is
# unrolled into the kernel, so the count bounds its compile time.
MAX_OSCILLATORS = 16


@dataclass(frozen=True)
class Synth:
    """One synth a recipe may name."""

    name: str
    synthax_class: str  # "module.Class": imported only when rendering
    # Constructor arguments a recipe may set, with the defaults a recipe gets (sorted pairs,
    # so a row is hashable); none: the synth takes no arguments.
    default_items: tuple[tuple[str, int], ...] = ()
    arg_bounds: tuple[int, int] = (0, MAX_OSCILLATORS)  # every argument's range, both ends included
    arg_meaning: str = "arguments"  # what the arguments count, for messages
    least_total: int = 0  # the arguments' sum must reach this
    least_total_meaning: str = ""  # what that sum counts, for messages

    @property
    def defaults(self) -> dict[str, int]:
        return dict(self.default_items)


SYNTHS: dict[str, Synth] = {
    synth.name: synth
    for synth in (
        Synth("voice", "synthax.synth.Voice"),
        Synth("voicefm", "synthax.synth.VoiceExpanded"),
        Synth(
            "parametric", "synthax.synth.ParametricSynth",
            default_items=(("fm_sine", 1), ("fm_square_saw", 1), ("sine", 2), ("square_saw", 2)),
            arg_meaning="oscillator counts", least_total=1, least_total_meaning="oscillator",
        ),
    )
}


def synth_args_problem(name: Any, args: Mapping[str, Any]) -> str | None:
    """Why synth ``name`` cannot take constructor arguments ``args`` (one line), or None."""
    synth = SYNTHS.get(name) if isinstance(name, str) else None
    if synth is None:
        return f"unknown synth {shown(name)}: expected one of {', '.join(SYNTHS)}"
    if not synth.default_items:
        return f"synth {shown(name)} takes no arguments" if args else None
    unknown = set(args) - set(synth.defaults)
    if unknown:
        return f"unknown {name} synth arguments: {shown(', '.join(sorted(unknown)), 120, quoted=False)}"
    low, high = synth.arg_bounds
    for key, value in sorted(args.items()):
        if not is_whole_number(value) or not low <= value <= high:
            return f"{name} {synth.arg_meaning} must be whole numbers in [{low}, {high}], got {key}={shown(value)}"
    if sum(args.values()) < synth.least_total:
        return f"a {name} synth needs at least {synth.least_total} {synth.least_total_meaning}"
    return None


def synth_args_help() -> str:
    """The arguments each synth takes, with their defaults, for ``--help``."""
    return "; ".join(
        f"{synth.name}: {', '.join(f'{key}={value}' for key, value in synth.defaults.items())}"
        for synth in SYNTHS.values()
        if synth.default_items
    )
