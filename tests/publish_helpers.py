"""The publishing commands run in-process, and a shard rewritten after an edit: shared by
the verify, info/export/card, publishing bad-input and pack tests."""

import io
import tarfile

import typer
from typer.testing import CliRunner

from doppelgen.format import iter_tar_members, shard_name
from doppelgen.publish.cli import register


def publish_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test app holding the publishing commands."""

    register(app)
    return app


def run_cli(*args: str):
    return CliRunner().invoke(publish_app(), [str(a) for a in args])


def rewrite_shard(folder, shard: int, edit) -> None:
    """Re-tar shard ``shard`` after ``edit(list of [name, bytes])`` changed its members."""
    members = [[name, data] for name, data in iter_tar_members(folder / shard_name(shard))]
    edit(members)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (folder / shard_name(shard)).write_bytes(buffer.getvalue())
