"""One folder, one recipe: how a render claims its output folder, even under races.

Checking the folder's contents and then writing is not enough: two renders of different
recipes started together both saw an empty folder and mixed their shards. So a render
first claims the folder for its recipe with a marker file holding the recipe's sha256,
created atomically (a fully written temporary hard-linked to the marker's name: the
link fails if the name exists, on NFS too). A render whose recipe differs from the
marker's is refused; renders of the same recipe share the folder, from several machines
too (``--shard-range``).

Replacing a dataset (``--overwrite``) must not pull the folder from under a render still
writing into it, so every render also holds ``flock`` on a lock file: shared while
rendering, exclusive while replacing. Where the file system has no locks, the marker
alone still refuses a second recipe; only --overwrite loses that protection.

On an object store (``storage.ObjectStore``) the marker is created by a conditional PUT
(S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``): of renders racing for an
unclaimed prefix exactly one wins there too, and a second recipe is refused. Object
stores have no locks, so there --overwrite does not wait for, or stop, a render still
writing into the prefix: replace a dataset only when nothing renders into it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from doppelgen.files import hold_lock, release_lock
from doppelgen.format import MANIFEST_NAME, shard_index
from doppelgen.storage import LocalStore, Store, open_store

RECIPE_MARKER = ".doppelgen-recipe"
LOCK_NAME = ".doppelgen.lock"


class FolderTakenError(RuntimeError):
    """The folder holds, or is being written with, another recipe; the message is one line."""


def marked_recipe(store: Store) -> str | None:
    """The recipe sha256 the folder is claimed for, None when unclaimed."""
    try:
        text = store.read_bytes(RECIPE_MARKER, 200).decode("ascii", "replace").strip()
    except FileNotFoundError:
        return None
    except OSError:  # not a regular file (a FIFO would have blocked), unreadable
        return "unreadable marker"
    return text or "unreadable marker"


def claim_folder(store: Store, recipe_sha256: str) -> bool:
    """Claim the folder for the recipe unless it is claimed already; True if this call
    made the claim. Atomic: of renders racing for an unclaimed folder exactly one wins
    (``Store.create``)."""
    return store.create(RECIPE_MARKER, f"{recipe_sha256}\n".encode())


def release_claim(store: Store) -> None:
    store.delete(RECIPE_MARKER)


@contextmanager
def folder_lock(out: Path, exclusive: bool) -> Iterator[None]:
    """Hold the folder's render lock, shared or exclusive, for the ``with`` block; a
    conflicting holder is refused at once (FolderTakenError), never waited for. Where the
    file system has no locks, the recipe marker still guards the folder."""
    try:
        descriptor = hold_lock(out / LOCK_NAME, exclusive=exclusive)
    except BlockingIOError:
        doing = "writing into" if exclusive else "replacing the dataset in"
        raise FolderTakenError(f"another render is {doing} {out}; wait for it to end") from None
    try:
        yield
    finally:
        release_lock(descriptor)


@contextmanager
def claimed_folder(store: Store, recipe_sha256: str, held: Callable[[Store], set[str]], overwrite: bool,
                   clear: Callable[[Store], None]) -> Iterator[None]:
    """Hold the store for one recipe for the ``with`` block: refuse (FolderTakenError) when
    its marker or contents (``held(store)``: recipe hashes of its manifest and stats files)
    name another recipe, unless ``overwrite``, which ``clear``s it first."""
    out = store.location
    lock = folder_lock(store.folder, exclusive=overwrite) if isinstance(store, LocalStore) else nullcontext()
    with lock:
        marker = marked_recipe(store)
        if marker == recipe_sha256 and not overwrite and not isinstance(store, LocalStore):
            # Claimed for this recipe already. On an object store reading every stats file
            # costs a request each, for every task of a cluster render; the claim made by
            # the first render (after it read them) is what the others rely on.
            yield
            return
        holds = held(store)
        if marker is not None:
            holds.add(marker)
        if holds and holds != {recipe_sha256}:
            if not overwrite:
                raise FolderTakenError(f"{out} holds a different dataset recipe; choose another folder or pass --overwrite")
            clear(store)
            release_claim(store)
        if not claim_folder(store, recipe_sha256) and marked_recipe(store) != recipe_sha256:
            # Lost a race to a render of another recipe that started at the same moment.
            raise FolderTakenError(f"{out} is being rendered with a different dataset recipe; choose another folder")
        yield


def clear_dataset(out: str | os.PathLike | Store) -> None:
    """Remove only what a render writes: shards, their stats and the manifest."""
    store = open_store(out)
    for name in store.names():
        if name == MANIFEST_NAME or shard_index(name) is not None or (name.startswith("pairs-") and name.endswith(".stats.json")):
            store.delete(name)
