"""How an output gets into place: staged beside the destination and renamed when complete.

Everything is written to a staging path beside the destination and renamed into place when complete;
staging left by a killed run is removed by the next run to the same destination; outputs get the
usual umask-based permissions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sparse_edit.errors import SparseEditError
from sparse_edit.io.claims import CLAIM_SUFFIX
from sparse_edit.io.destination import OUTPUT_MARKER, Command, written_by

# Written into every staging folder: which process owns it (what a later run may clean up).
STAGING_MARKER = ".sparse-edit-staging.json"
STAGING_SUFFIX = ".staging"
PARTIAL_SUFFIX = ".partial"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_mode(folder: bool) -> int:
    """The permissions a plain ``mkdir``/``open`` would give (tempfile's are owner-only)."""
    return (0o777 if folder else 0o666) & ~_umask()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


# What sparse-edit leaves beside a destination NAME while it writes, by kind: a staging folder (it holds
# STAGING_MARKER), a partial file (tempfile's 8 random characters), a retired earlier output (it holds
# OUTPUT_MARKER); each name carries the writing process's pid.
_LEFTOVER = re.compile(
    rf"\.(?P<name>.+)\.(?P<pid>\d+)(?:\.[^/]*{re.escape(STAGING_SUFFIX)}|\.[a-z0-9_]{{8}}{re.escape(PARTIAL_SUFFIX)}|\.old)"
)


def _leftover_pid(item: Path) -> int | None:
    """The pid in the name of a staging/partial/retired path of sparse-edit's, or None if it is not one."""
    match = _LEFTOVER.fullmatch(item.name)
    return int(match.group("pid")) if match else None


def _ours(item: Path) -> bool:
    """Whether a leftover-shaped path was made by sparse-edit (a folder must carry its marker)."""
    if item.is_symlink():
        return False
    if item.is_dir():
        if item.name.endswith(".old"):
            return (item / OUTPUT_MARKER).is_file()
        # A staging folder swaps its staging marker for the output marker just before the rename.
        return (item / STAGING_MARKER).is_file() or (item / OUTPUT_MARKER).is_file()
    return item.is_file() and item.name.endswith(PARTIAL_SUFFIX)


def _remove_if_unheld(lock: Path) -> bool:
    """Remove a claim file a killed run left (no process holds its lock); ``claimed`` copes with the race."""
    try:
        with open(lock, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.unlink(missing_ok=True)
            return True
    except (BlockingIOError, OSError):
        return False


def remove_stale_staging(dest: Path) -> list[Path]:
    """Remove what killed sparse-edit runs left in ``dest``'s folder, for any output there: staging folders,
    partial files and retired outputs whose process is gone. Anything not made by sparse-edit is kept."""
    removed: list[Path] = []
    parent = Path(dest).parent
    if not parent.is_dir():
        return removed
    for item in parent.glob(".*"):
        if item.name.endswith(CLAIM_SUFFIX) and _remove_if_unheld(item):
            removed.append(item)
            continue
        pid = _leftover_pid(item)
        if pid is None or pid == os.getpid() or _pid_alive(pid) or not _ours(item):
            continue
        if item.is_dir():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)
        removed.append(item)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def staged_folder(dest: Path, overwrite: bool, command: Command) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``dest`` in one rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=STAGING_SUFFIX, dir=dest.parent))
    try:
        staging.chmod(output_mode(folder=True))
        (staging / STAGING_MARKER).write_text(json.dumps({"pid": os.getpid(), "command": command}) + "\n")
        yield staging
        (staging / STAGING_MARKER).unlink()
        (staging / OUTPUT_MARKER).write_text(json.dumps({"command": command}) + "\n", encoding="utf-8")
        _move_into_place(staging, dest, overwrite, command)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SparseEditError(f"{dest}: {_write_failure(exc)}; nothing was written") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_failure(exc: OSError) -> str:
    # exc.filename may be the file being copied from, so only the destination is named.
    return f"writing failed ({exc.strerror or exc})"


def _move_into_place(staging: Path, dest: Path, overwrite: bool, command: Command) -> None:
    if not dest.exists():
        staging.rename(dest)
        return
    if not overwrite or not written_by(command, dest):
        raise SparseEditError(f"{dest}: appeared while writing and is not ours to replace; nothing was written")
    retired = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    dest.rename(retired)
    staging.rename(dest)
    shutil.rmtree(retired, ignore_errors=True)


@contextlib.contextmanager
def staged_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block ends it replaces ``path`` in one rename.

    A failed write (disk full, file-size limit) removes the temporary file and names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        temporary.chmod(output_mode(folder=False))
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise SparseEditError(f"{path}: {_write_failure(exc)}; nothing was written") from exc
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, content: bytes) -> None:
    """Write next to ``path`` and rename, so readers never see a partial file."""
    with staged_file(path) as temporary:
        temporary.write_bytes(content)
