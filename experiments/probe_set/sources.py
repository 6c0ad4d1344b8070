"""The probe set's SOURCES.md: provenance, licences, selection rules, counts and splits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # for the annotation only: probe_set imports this module
    from experiments.probe_set.build import DrumkitPackage


def sources_markdown(manifest: dict, package: DrumkitPackage, left_out: Sequence[tuple[str, str]]) -> str:
    """Provenance, licences, selection and counts of a built set, for people. `left_out`:
    (kits, why) of the package's kits the set does not use."""
    recipe = manifest["recipe"]  # not imported from probe_set: it imports this module
    classes = recipe["classes"]
    pre_onset, onset, clip, fade, peak = (recipe[key] for key in (
        "pre_onset_samples", "onset_fraction", "clip_samples", "fade_samples", "peak"))
    counts = manifest["counts"]
    test = manifest["default_split"]["test_groups"]
    lines = [
        "# Drum probe set: sources and licences",
        "",
        "Built on this machine by `experiments/probe_set/build.py` of doppelgangers from a Debian package;",
        "the project does not redistribute these sounds. The clips are derived works of the samples",
        "below (cut to 1 s, mixed to mono, resampled to 16 kHz, peak-normalized) and stay under each",
        "kit's licence: keep this file with them if you share them.",
        "",
        "## Package",
        "",
        f"- Debian package `{package.name}`, version `{package.version}` (bookworm, main, architecture all)",
        f"- file `{package.filename}`, {package.size} bytes, sha256 `{package.sha256}`",
        "- upstream: Hydrogen drum machine's drumkit feed, http://www.hydrogen-music.org/feeds/drumkit_list.php",
        "  (homepage http://www.hydrogen-music.org/); Debian keeps only the DFSG-free kits",
        "- the package's packaging and its drumkits.json: GPL-2+ (IOhannes m zmölnig and others)",
        "- each kit's licence, as the package's `/usr/share/doc/hydrogen-drumkits/copyright` names it:",
        "",
        "| kit | group | author | licence | why it counts as a recording |",
        "| --- | --- | --- | --- | --- |",
    ]
    for kit in package.kits:
        lines.append(f"| {kit.folder} | {kit.group} | {kit.author} | {kit.license} | {kit.provenance} |")
    lines += [
        "",
        "Licence texts: GPL-2 and GPL-2+ in `/usr/share/common-licenses/GPL-2` on Debian (or",
        "https://www.gnu.org/licenses/old-licenses/gpl-2.0.html); CC-BY-SA-3.0-us at",
        "https://creativecommons.org/licenses/by-sa/3.0/us/legalcode; the Colombo kit's composition",
        "exception is quoted in the package's copyright file.",
        "",
        "Kits of the package left out:",
        "",
    ]
    lines += [f"- {names}: {reason}" for names, reason in left_out]
    lines += [
        "",
        "## Selection",
        "",
        "- An instrument's class comes from its name in the kit's `drumkit.xml`, by these rules",
        "  (case-insensitive; a name matching none, or more than one, is left out):",
        "",
    ]
    lines += [f"  - {label}: `{pattern}`" for label, pattern in recipe["rules"].items()]
    overrides = [(kit.folder, name, label) for kit in package.kits for name, label in kit.overrides]
    lines += [f"  - override: {folder} instrument \"{name}\" is {label}" for folder, name, label in overrides]
    lines += [
        "- Every velocity layer of a selected instrument is a sample; a file used by several",
        "  instruments or kits is taken once (by sha256), and dropped if they disagree on its class.",
        "- Clip: the file read, mixed to mono, resampled to 16 kHz (torchaudio, as `doppeltrain embed`",
        f"  does); from {pre_onset} samples before the onset (first sample at {onset} of the peak),",
        f"  {clip} samples (1 s): longer sounds fade out over their last {fade} samples, shorter",
        f"  ones are zero-padded; peak-normalized to {peak}; written as 16-bit PCM WAV.",
        "- Groups: the kits recorded from one drum set share a group (the three Millo kits are one",
        "  Ludwig set). A split never puts a group on both sides.",
        "",
        "## Counts (clips per group and class)",
        "",
        "| group | " + " | ".join(classes) + " | total |",
        "| --- |" + " --- |" * (len(classes) + 1),
    ]
    for group, row in counts.items():
        lines.append(f"| {group} | " + " | ".join(str(row[label]) for label in classes) + f" | {sum(row.values())} |")
    totals = {label: sum(row[label] for row in counts.values()) for label in classes}
    lines.append("| all | " + " | ".join(str(totals[label]) for label in classes) + f" | {sum(totals.values())} |")
    lines += [
        "",
        "## Splits",
        "",
        f"- `split.csv`: test = {', '.join(test)}; train = the other groups.",
        "- `split-<group>.csv`: that group is the test set (leave one group out); the mean over",
        "  these folds tests every clip once.",
        "- Use: `doppeltrain probe CHECKPOINT OUT --split OUT/split.csv --baseline logmel --baseline random`.",
        "- `clips.csv`: every clip's path, label and group; `manifest.json`: the recipe, and every clip's",
        "  source file, its sha256 and the clip's sha256.",
        "",
    ]
    return "\n".join(lines)
