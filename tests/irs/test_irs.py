"""`doppelgen irs`: reproducible room impulse responses, their verification and the cached
default set the trainer uses."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from doppelgen.cli import main
from doppelgen.files import TEMP_MARK
from doppelgen.irs import sets as irs
from doppelgen.irs.rooms import Room, draw_room, eyring_absorption, render_impulse_response
from doppelgen.irs.sets import IrError, IrSetConfig, cached_ir_dir, default_ir_dir, impulse_response, ir_name, render_ir_set
from doppelgen.irs.verify import verify_ir_set

SMALL = IrSetConfig(count=3, seed=7)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    """A finished set of ``SMALL``. Read-only: copy it before changing anything."""
    out = tmp_path_factory.mktemp("irs")
    render_ir_set(out, SMALL)
    return out


def audio_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.flac"))}


def manifest_without_record(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("record")
    return manifest


def test_a_set_is_flac_files_and_a_manifest_with_recipe_and_hashes(small_set):
    manifest = json.loads((small_set / "manifest.json").read_text())
    recipe = manifest["recipe"]
    assert recipe["kind"] == "impulse_responses" and recipe["count"] == 3 and recipe["seed"] == 7
    assert recipe["sample_rate"] == 16000 and recipe["method"]["pyroomacoustics"]
    assert [entry["name"] for entry in manifest["files"]] == [ir_name(k) for k in range(3)]
    for entry in manifest["files"]:
        audio, rate = sf.read(small_set / entry["name"], dtype="float64")
        info = sf.info(str(small_set / entry["name"]))
        assert info.format == "FLAC" and info.subtype == "PCM_24" and rate == 16000 and audio.ndim == 1
        assert len(audio) == entry["samples"] and np.sum(audio**2) == pytest.approx(1.0, abs=1e-5)
        assert entry["size"] == (small_set / entry["name"]).stat().st_size


def test_rendering_again_gives_the_same_bytes(small_set, tmp_path):
    render_ir_set(tmp_path, SMALL)
    assert audio_bytes(tmp_path) == audio_bytes(small_set)
    assert manifest_without_record(tmp_path) == manifest_without_record(small_set)


def test_response_k_does_not_depend_on_count_order_or_workers(small_set, tmp_path):
    render_ir_set(tmp_path, IrSetConfig(count=5, seed=7), workers=2)
    larger = audio_bytes(tmp_path)
    assert {name: larger[name] for name in audio_bytes(small_set)} == audio_bytes(small_set)
    backwards = [impulse_response(7, k)[0] for k in (4, 3)][::-1]
    for k, response in zip((3, 4), backwards):
        np.testing.assert_array_equal(impulse_response(7, k)[0], response)
    assert not np.array_equal(impulse_response(8, 3)[0][:100], backwards[0][:100])  # the seed matters


def test_a_rerun_completes_a_partial_set_with_the_same_bytes(small_set, tmp_path):
    shutil.copytree(small_set, tmp_path / "set")
    folder = tmp_path / "set"
    (folder / "manifest.json").unlink()
    (folder / ir_name(0)).unlink()
    (folder / ir_name(2)).unlink()
    dead = folder / f".{ir_name(2)}{TEMP_MARK}{os.uname().nodename}-999999999"  # a killed writer's
    dead.write_bytes(b"half a file")
    summary = render_ir_set(folder, SMALL)
    assert (summary.rendered, summary.skipped, summary.manifest_written) == (2, 1, True)
    assert audio_bytes(folder) == audio_bytes(small_set) and not dead.exists()
    assert manifest_without_record(folder) == manifest_without_record(small_set)
    again = render_ir_set(folder, SMALL)  # complete: nothing to do, the manifest is kept
    assert (again.rendered, again.skipped, again.manifest_written) == (0, 3, False)


def test_rooms_follow_the_ranges_and_responses_decay_at_their_rt60():
    ranges = SMALL.rooms
    for k in range(300):  # drawing is cheap, rendering is not
        room = draw_room(11, k, ranges)
        length, width, _ = room.size
        assert ranges.length_m[0] <= length <= ranges.length_m[1] and width >= ranges.min_width_m
        assert ranges.rt60_s[0] <= room.rt60 <= ranges.rt60_s[1] and 0 < room.absorption <= ranges.max_absorption + 1e-9
        for point in (room.source, room.microphone):
            assert all(ranges.wall_margin_m <= x <= side - ranges.wall_margin_m for x, side in zip(point, room.size))
            assert ranges.position_height_m[0] <= point[2] <= ranges.position_height_m[1]
        assert math.dist(room.source, room.microphone) >= ranges.min_distance_m
    # A reverberant small room, beyond what the image sources cover: the late part decays
    # at the room's RT60 (T30 from the Schroeder curve, -5 to -35 dB).
    room = Room((5.0, 4.0, 2.8), 0.8, eyring_absorption(0.8, (5.0, 4.0, 2.8)), (1.2, 1.5, 1.3), (3.9, 2.6, 1.6))
    response = render_impulse_response(room, np.random.default_rng(0), 16000).astype(np.float64)
    remaining = 10 * np.log10(np.cumsum((response**2)[::-1])[::-1])
    t30 = 2 * (np.argmax(remaining < -35) - np.argmax(remaining < -5)) / 16000
    assert t30 == pytest.approx(0.8, rel=0.1)
    assert len(response) / 16000 < 0.8 * 1.1  # cut where 60 dB are left
    first_strong = np.argmax(np.abs(response) > 0.5 * np.abs(response).max())
    assert 35 <= first_strong <= 45  # the direct sound, 40 samples in: no propagation delay


def test_verify_passes_on_a_good_set(small_set, capsys):
    assert verify_ir_set(small_set).ok
    assert main(["verify", str(small_set)]) == 0
    assert "ok:" in capsys.readouterr().err


def test_verify_names_each_damaged_missing_or_stray_file(small_set, tmp_path, capsys):
    folder = tmp_path / "set"
    shutil.copytree(small_set, folder)
    damaged = bytearray((folder / ir_name(1)).read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    (folder / ir_name(1)).write_bytes(bytes(damaged))
    (folder / ir_name(2)).unlink()
    sf.write(folder / "stray.wav", np.zeros(10), 16000)
    problems = verify_ir_set(folder).problems
    assert f"{ir_name(1)}: sha256 differs from the manifest" in problems
    assert f"{ir_name(2)}: missing" in problems
    assert any(p.startswith("stray.wav: not in the manifest") for p in problems)
    assert not any(p.startswith(ir_name(0)) for p in problems)
    assert main(["verify", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert f"{ir_name(1)}: sha256 differs" in out and err.startswith("FAILED:")


def test_verify_checks_the_audio_against_the_recipe(small_set, tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(small_set, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    louder, rate = sf.read(folder / ir_name(0))
    sf.write(folder / ir_name(0), 0.5 * louder, rate, subtype="PCM_24")
    sf.write(folder / ir_name(1), sf.read(folder / ir_name(1))[0], 8000, subtype="PCM_24", format="FLAC")
    for k in (0, 1):  # hashes updated: only the audio checks can tell
        digest, size = irs_file_hash(folder / ir_name(k))
        manifest["files"][k].update(sha256=digest, size=size)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    problems = verify_ir_set(folder).problems
    assert any(p.startswith(f"{ir_name(0)}: energy 0.25") for p in problems)
    assert any(p.startswith(f"{ir_name(1)}: sample rate 8000 Hz") for p in problems)
    assert len(problems) == 2


def irs_file_hash(path: Path) -> tuple[str, int]:
    from doppelgen.files import file_sha256

    return file_sha256(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--count", "0"], "count must be"),
        (["--sample-rate", "100"], "sample rate must be"),
        (["--seed", "-1"], "seed must be"),
        (["--workers", "-1"], "workers must be"),
        (["--count", "x"], "Invalid value for '--count'"),
    ],
)
def test_cli_refuses_bad_options_in_one_line(tmp_path, capsys, args, message):
    assert main(["irs", str(tmp_path / "out"), "-q", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_refuses_folders_it_cannot_or_must_not_write(small_set, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    sf.write(recordings / "take.wav", np.zeros(10), 16000)
    cases = [
        (tmp_path / "file", "is not a folder"),
        (tmp_path / "file" / "out", "cannot create"),
        (small_set, "another recipe (differs in: count)"),
        (recordings, "already holds audio that doppelgen irs did not write (take.wav)"),
    ]
    before = audio_bytes(small_set)
    for out, message in cases:
        assert main(["irs", str(out), "-q", "--count", "2", "--seed", "7"]) == 2, out
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert audio_bytes(small_set) == before and (recordings / "take.wav").exists()


def test_cli_renders_and_reports(tmp_path, capsys):
    assert main(["irs", str(tmp_path / "out"), "--count", "2", "--seed", "3", "--sample-rate", "8000", "-q"]) == 0
    assert capsys.readouterr().out.startswith("2 impulse responses rendered, 0 already there")
    assert sf.info(str(tmp_path / "out" / ir_name(1))).samplerate == 8000 and verify_ir_set(tmp_path / "out").ok


def test_the_default_set_is_rendered_into_the_cache_once_and_repaired(tmp_path, monkeypatch):
    monkeypatch.setenv("DOPPELGANGERS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(irs, "DEFAULT_IR_COUNT", 3)  # the real default is 300: seconds, not milliseconds
    renders = []
    real_render = irs.render_ir_set
    monkeypatch.setattr(irs, "render_ir_set", lambda *a, **k: renders.append(real_render(*a, **k)) or renders[-1])
    folder = default_ir_dir()
    recipe = IrSetConfig(count=3).recipe()
    assert folder == tmp_path / "cache" / "irs" / irs.recipe_sha256(recipe)[:16]
    assert verify_ir_set(folder).ok and len(renders) == 1
    assert default_ir_dir() == folder and len(renders) == 1  # reused, not rendered again
    assert default_ir_dir(8000) != folder and len(renders) == 2  # another rate is another set
    good = (folder / ir_name(1)).read_bytes()
    (folder / ir_name(1)).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert default_ir_dir() == folder and renders[-1].rendered == 1  # only the damaged file
    assert (folder / ir_name(1)).read_bytes() == good and verify_ir_set(folder).ok


def test_an_unwritable_cache_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DOPPELGANGERS_CACHE", str(tmp_path / "file"))
    with pytest.raises(IrError, match="cannot write the impulse-response cache"):
        cached_ir_dir(IrSetConfig(count=1))


CONCURRENT_CALLER = """
import sys, time
from pathlib import Path
import doppelgen.irs.sets as irs
real = irs.render_ir_set
def counted(*args, **kwargs):
    print("rendering", flush=True)
    return real(*args, **kwargs)
irs.render_ir_set = counted
ready, start = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not start.exists():  # both callers start together
    time.sleep(0.001)
print(irs.cached_ir_dir(irs.IrSetConfig(count=4, seed=5)), flush=True)
"""


def test_concurrent_callers_render_one_set(tmp_path):
    env = {**os.environ, "DOPPELGANGERS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    start, ready = tmp_path / "start", [tmp_path / f"ready-{k}" for k in range(2)]
    callers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_CALLER, str(r), str(start)], env=env, stdout=subprocess.PIPE, text=True) for r in ready]
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    start.touch()
    outputs = [caller.communicate(timeout=300)[0].split("\n") for caller in callers]
    assert all(caller.returncode == 0 for caller in callers)
    assert sum(line == "rendering" for output in outputs for line in output) == 1
    folders = {output[-2] for output in outputs}
    assert len(folders) == 1 and verify_ir_set(folders.pop()).ok
