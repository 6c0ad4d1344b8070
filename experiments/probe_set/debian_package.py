"""A pinned Debian package: fetch it, check its sha256 and size, and stream its data archive."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from doppelgen.console import InputError, one_line
from doppelgen.files import file_sha256


class PackageError(InputError):
    """A package that cannot be fetched, checked or read, in one line naming its cause."""


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str
    filename: str
    pool_path: str  # below a mirror's base URL
    sha256: str
    size: int


def fetch_package(package: DebianPackage, downloads: Path, mirror: Optional[str] = None,
                  log: Callable[[str], None] = print) -> Path:
    """The package's .deb in `downloads`, checked against its pinned sha256 and size:
    the cached copy when there is one, else downloaded (apt-get, or `mirror`'s pool)."""
    downloads.mkdir(parents=True, exist_ok=True)
    deb = downloads / package.filename
    if not deb.is_file():
        log(f"downloading {package.name} {package.version} ({package.size / 1e6:.0f} MB)")
        partial = downloads / f".{package.filename}.partial-{os.getpid()}"
        try:
            if mirror:
                _download_from_mirror(package, mirror, partial)
            else:
                _download_with_apt(package, partial)
            verify_package(partial, package)
            os.replace(partial, deb)
        finally:
            partial.unlink(missing_ok=True)
    verify_package(deb, package)
    return deb


def verify_package(path: Path, package: DebianPackage) -> None:
    """PackageError unless `path` has the package's pinned sha256 and size."""
    digest, size = file_sha256(path)
    if digest != package.sha256 or size != package.size:
        raise PackageError(
            f"{path} is not {package.name} {package.version}: sha256 {digest} ({size} bytes), "
            f"expected {package.sha256} ({package.size} bytes); delete it to download again"
        )


def _download_with_apt(package: DebianPackage, target: Path) -> None:
    if shutil.which("apt-get") is None:
        raise PackageError(
            f"apt-get is not available: put {package.filename} (Debian, sha256 {package.sha256}) "
            f"in {target.parent}, or pass --mirror with a Debian mirror's base URL"
        )
    scratch = target.parent / f".apt-{os.getpid()}"
    scratch.mkdir(exist_ok=True)
    try:
        result = subprocess.run(
            ["apt-get", "download", f"{package.name}={package.version}"],
            cwd=scratch, capture_output=True, text=True, check=False,
        )
        fetched = scratch / package.filename
        if result.returncode != 0 or not fetched.is_file():
            reason = " ".join((result.stderr or result.stdout).split()) or f"exit status {result.returncode}"
            raise PackageError(f"apt-get download {package.name}={package.version} failed: {reason}")
        os.replace(fetched, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _download_from_mirror(package: DebianPackage, mirror: str, target: Path) -> None:
    url = f"{mirror.rstrip('/')}/{package.pool_path}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 20)
    except OSError as error:  # URLError and HTTPError are OSErrors
        raise PackageError(f"cannot download {url}: {one_line(error)}") from None


def deb_data_member(deb: Path) -> tuple[str, int, int]:
    """(name, offset, size) of the data archive inside a .deb (an ``ar`` archive)."""
    with open(deb, "rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise PackageError(f"{deb} is not a Debian package (no ar header)")
        while True:
            header = handle.read(60)
            if len(header) < 60:
                raise PackageError(f"{deb} holds no data.tar member")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise PackageError(f"{deb}: corrupt ar member header") from None
            if name.startswith("data.tar"):
                return name, handle.tell(), size
            handle.seek(size + (size % 2), os.SEEK_CUR)  # members are 2-byte aligned


@contextmanager
def open_data_archive(deb: Path) -> Iterator[tarfile.TarFile]:
    """The .deb's data archive as a streaming tarfile: iterate it once, in order, and
    read each member with ``extractfile`` as it comes; nothing is unpacked to disk."""
    name, offset, size = deb_data_member(deb)
    compression = {"data.tar.xz": "xz", "data.tar.gz": "gz", "data.tar.bz2": "bz2", "data.tar": ""}.get(name)
    if compression is None:
        raise PackageError(f"{deb}: cannot read {name} (xz, gz or bz2 expected)")
    with open(deb, "rb") as handle:
        handle.seek(offset)
        data = io.BufferedReader(_Window(handle, size), buffer_size=1 << 20)
        with tarfile.open(fileobj=data, mode=f"r|{compression}" if compression else "r|") as archive:
            yield archive


class _Window(io.RawIOBase):
    """A read-only view of `size` bytes of an open file from its current position."""

    def __init__(self, handle, size: int):
        self.handle, self.left = handle, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        if count <= 0:
            return 0
        chunk = self.handle.read(count)
        buffer[:len(chunk)] = chunk
        self.left -= len(chunk)
        return len(chunk)
