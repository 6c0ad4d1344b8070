"""The wheels the lent GPU machine needs for gpu_check.sh: fetch them, and check the list.

The machine has no network; its image has torch, JAX and most of what the project
imports (``device_image_packages.txt``), and ``device_wheels.txt`` names the rest, pinned.
``download DEST`` fetches that list for the machine (CPython 3.12, manylinux x86-64);
``check DEST`` reads the wheels' own requirements and names any that neither list holds
(the wheel list once lacked cffi, which soundfile needs, and nothing ran).

    python benchmarks/device_wheels.py download .whl && python benchmarks/device_wheels.py check .whl
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

HERE = Path(__file__).resolve().parent
WHEEL_LIST = HERE / "device_wheels.txt"
IMAGE_LIST = HERE / "device_image_packages.txt"
DEVICE_PYTHON = "3.12"
# pip matches manylinux tags exactly: the ones the wheels of this list are built for.
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip().lower())


def read_list(path: Path) -> list[str]:
    """The non-comment lines of a list file."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]


def wheel_requirements() -> list[str]:
    return read_list(WHEEL_LIST)


def image_packages() -> set[str]:
    return {normalized(name) for name in read_list(IMAGE_LIST)}


def download(dest: Path, python_version: str = DEVICE_PYTHON, platforms: tuple[str, ...] = DEVICE_PLATFORMS) -> list[Path]:
    """Fetch every wheel of the list into ``dest`` for ``python_version`` and ``platforms``
    (binary wheels only, no dependencies: the list names them all)."""
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        command += ["--platform", platform]
    subprocess.run([*command, "-d", str(dest), *wheel_requirements()], check=True)
    return sorted(dest.glob("*.whl"))


def wheel_metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(archive.read(name).decode())


def missing_requirements(wheels: list[Path], python_version: str = DEVICE_PYTHON) -> dict[str, list[str]]:
    """``{wheel's project: [requirements neither list holds]}`` for the device's Python on
    Linux x86-64 (extras left out); empty when the lists are complete."""
    from packaging.requirements import Requirement

    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    have = image_packages() | {normalized(Requirement(line).name) for line in wheel_requirements()}
    missing: dict[str, list[str]] = {}
    for wheel in wheels:
        meta = wheel_metadata(wheel)
        for line in meta.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            if normalized(requirement.name) not in have:
                missing.setdefault(meta["Name"], []).append(str(requirement))
    return missing


def project_requirements_missing() -> list[str]:
    """The project's own dependencies (pyproject.toml, extras left out) that neither list
    holds. Needs Python 3.11 (tomllib)."""
    import tomllib
    from packaging.requirements import Requirement

    have = image_packages() | {normalized(Requirement(line).name) for line in wheel_requirements()}
    project = tomllib.loads((HERE.parent / "pyproject.toml").read_text())["project"]
    return [line for line in project["dependencies"] if normalized(Requirement(line).name) not in have]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("download", "check"))
    parser.add_argument("dest", type=Path, help="folder of the wheels (e.g. .whl, ignored by git)")
    args = parser.parse_args(argv)
    if args.command == "download":
        for wheel in download(args.dest):
            print(wheel.name)
        return 0
    wheels = sorted(args.dest.glob("*.whl"))
    missing = missing_requirements(wheels)
    for project, requirements in missing.items():
        print(f"{project} needs {', '.join(requirements)}: add it to {WHEEL_LIST.name}", file=sys.stderr)
    ours = project_requirements_missing()
    if ours:
        print(f"doppelgangers needs {', '.join(ours)}: add it to {WHEEL_LIST.name}", file=sys.stderr)
    return 1 if missing or ours else 0


if __name__ == "__main__":
    sys.exit(main())
