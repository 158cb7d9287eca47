"""One process per run folder. Two runs writing one folder would interleave their metrics rows,
episode files and checkpoints, and a resume would then drop the other's rows: so a second process
is refused, by name, before it writes or connects to anything. The lock is the kernel's (flock), so
a killed run never leaves a stale one; the `.lock` file it lives on stays behind, holding the last
pid, except in a folder the block created and left empty (a run that failed before it began)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


class FolderInUse(FileExistsError):
    """Another live process holds the folder."""


@contextmanager
def hold(folder: Path) -> Iterator[None]:
    """Hold `folder` (created if missing) for this process inside the block; raises FolderInUse if
    another process holds it."""
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise FolderInUse(f"{folder} is in use by another process (pid {holder}): two runs writing one "
                              "folder would mix their rows and files; wait for it to end, or choose another "
                              "--out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                lock.unlink()  # nothing was written: no folder is left behind
                folder.rmdir()
            fcntl.flock(f, fcntl.LOCK_UN)
