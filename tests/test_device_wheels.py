"""gpu_check.sh's wheel list is complete: with only what the lent machine's image has plus
these wheels, everything gpu_check imports imports.

The machine's image is not here, so the test builds its stand-in: an empty ``--target``
holding the list's wheels (for this interpreter; they are also fetched for the machine's
CPython 3.12 and manylinux, which checks that they exist there and that their own
requirements are met), beside links to only those packages of this environment that the
image's list names, in a Python started with no site-packages at all."""

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from benchmarks.device_wheels import (
    DEVICE_PLATFORMS,
    download,
    image_packages,
    missing_requirements,
    normalized,
    project_requirements_missing,
)

REPO = Path(__file__).resolve().parents[1]
OFFLINE = ("Could not fetch URL", "NewConnectionError", "Temporary failure in name resolution", "Network is unreachable", "ProxyError")


def download_or_skip(dest: Path, python_version: str) -> list[Path]:
    """The list's wheels; skipped (not failed) only where no package index answers."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest / "probe"), "braceexpand==0.1.7"],
        capture_output=True, text=True, timeout=300,
    )
    if probe.returncode != 0 and any(sign in probe.stderr for sign in OFFLINE):
        pytest.skip("no package index reachable")
    return download(dest / "wheels", python_version, DEVICE_PLATFORMS)


def image_stand_in(folder: Path) -> Path:
    """Links to the top-level modules of this environment's packages that the image has."""
    folder.mkdir()
    wanted = image_packages()
    for distribution in metadata.distributions():
        if normalized(distribution.metadata["Name"]) not in wanted or not distribution.files:
            continue
        root = Path(distribution.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in distribution.files if not str(f).startswith("..")}:
            source, link = root / top, folder / top
            if source.exists() and not link.exists():
                link.symlink_to(source)
    return folder


@pytest.mark.slow
def test_the_wheel_list_installs_into_an_empty_target_and_everything_gpu_check_imports_imports(tmp_path):
    device = download_or_skip(tmp_path / "cp312", "3.12")
    assert missing_requirements(device) == {}
    if sys.version_info >= (3, 11):
        assert project_requirements_missing() == []

    here = download(tmp_path / "here", f"{sys.version_info.major}.{sys.version_info.minor}", DEVICE_PLATFORMS)
    target = tmp_path / "target"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(target), *map(str, here)], check=True)
    image = image_stand_in(tmp_path / "image")
    code = (
        "import json, sys\n"
        f"sys.path[:0] = {[str(REPO), str(target), str(image)]!r}\n"
        "from benchmarks.gpu_check import check_imports\n"
        "print(json.dumps(check_imports()))\n"
    )
    # -I -S: no site-packages, no PYTHONPATH, no user site: only the stand-in and the target.
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "ok", report["missing"]


def test_a_wheel_whose_requirement_neither_list_holds_is_named(tmp_path):
    import zipfile

    wheel = tmp_path / "needy-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(
            "needy-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: needy\nVersion: 1.0\nRequires-Dist: cffi>=1.0\nRequires-Dist: numpy\n"
            "Requires-Dist: not-on-the-image\nRequires-Dist: tomli; python_version < \"3.11\"\nRequires-Dist: pytest; extra == \"dev\"\n",
        )
    # cffi is in the wheel list, numpy on the image; tomli is not needed on 3.12, pytest only for an extra.
    assert missing_requirements([wheel]) == {"needy": ["not-on-the-image"]}
