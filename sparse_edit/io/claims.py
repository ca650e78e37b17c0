"""One writer per destination: a run claims its output path for as long as it runs.

A second sparse-edit run to the same path is refused at once (exit 2) instead of racing the first to
the rename; the claim is a locked file beside the destination, removed when the run ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from sparse_edit.errors import SparseEditError
from sparse_edit.io.destination import Command, check_output

CLAIM_SUFFIX = ".sparse-edit.lock"


def claim_path(dest: Path) -> Path:
    return Path(dest).with_name(f".{Path(dest).name}{CLAIM_SUFFIX}")


@contextlib.contextmanager
def claimed(dest: Path, flag: str = "--output") -> Iterator[None]:
    """Hold ``dest`` for this run: a second sparse-edit run to the same path is refused at once (exit 2)
    instead of racing this one to the rename. The lock file beside ``dest`` goes when the run ends, and so
    do folders made for it that stayed empty."""
    dest = Path(os.path.abspath(dest))
    missing = [folder for folder in [dest.parent, *dest.parent.parents] if not folder.exists()]
    if any(folder.exists() and not folder.is_dir() for folder in dest.parent.parents) or (
        dest.parent.exists() and not dest.parent.is_dir()
    ):
        yield  # no folder to claim in: check_output names the file in the way
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    path = claim_path(dest)
    try:
        handle = _lock(path, flag, dest)
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            handle.close()
    finally:
        for folder in missing:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def _lock(path: Path, flag: str, dest: Path) -> TextIO:
    """The claim file at ``path``, open and exclusively locked, with this process's pid in it."""
    while True:
        handle = open(path, "a+")  # noqa: SIM115 - the caller closes it when the run ends
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise SparseEditError(
                f"{flag} {dest}: another sparse-edit run (pid {holder}) is writing it; wait for it to end or "
                "pick another path"
            ) from None
        # The holder before us may have removed the file after we opened it: lock the file that is there.
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()


@contextlib.contextmanager
def claimed_output(
    dest: Path, command: Command, inputs: Iterable[tuple[str, Path]], overwrite: bool, flag: str = "--output"
) -> Iterator[None]:
    """``check_output``, then hold ``dest`` for the run (``claimed``) and check again under the claim."""
    inputs = list(inputs)
    check_output(dest, command, inputs, overwrite, flag)
    with claimed(dest, flag):
        check_output(dest, command, inputs, overwrite, flag)
        yield
