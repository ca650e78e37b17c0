"""Where a command's output may go, and how it gets there.

The rules every command shares:

* an output path is never an input, never contains one and never sits inside one;
* ``--overwrite`` only replaces an earlier output of the same command (recognised by the
  marker file every output folder carries, or a locate artifact's own metadata);
* everything is written to a staging path beside the destination and renamed into place when
  complete; staging left by a killed run is removed by the next run to the same destination;
* outputs get the usual umask-based permissions.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal, TextIO

from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import (
    EVAL_KIND,
    LOCATE_KIND,
    MANIFEST_FILE,
    MANIFEST_KIND,
    REPORT_JSON,
    json_field,
    read_metadata,
)

Command = Literal["locate", "apply", "eval", "revert", "tune", "gates"]
# Written into every output folder: which command made it (what --overwrite may replace).
OUTPUT_MARKER = ".sparse-edit-output.json"
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


def _resolved(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def written_by(command: Command, path: Path) -> bool:
    """Whether ``path`` is an earlier output of ``command`` (the only thing --overwrite replaces)."""
    if command == "locate":
        try:
            return path.is_file() and (read_metadata(path) or {}).get("kind") == LOCATE_KIND
        except SparseEditError:
            return False
    if command == "apply" and path.suffix == ".gguf" and path.is_file():
        from sparse_edit.io.gguf import KEY_PREFIX, read

        try:
            return KEY_PREFIX + "delta_sha256" in read(path).fields
        except SparseEditError:
            return False
    if not path.is_dir():
        return False
    if (path / OUTPUT_MARKER).is_file():
        return json_field(path / OUTPUT_MARKER, "command") == command
    # Folders written before the marker existed.
    if command == "apply":
        return json_field(path / MANIFEST_FILE, "kind") == MANIFEST_KIND
    if command == "eval":
        return json_field(path / REPORT_JSON, "kind") == EVAL_KIND
    return False


def check_output(
    dest: Path,
    command: Command,
    inputs: Iterable[tuple[str, Path]],
    overwrite: bool,
    flag: str = "--output",
) -> None:
    """Refuse, before any work, a destination that would destroy an input or anything not ours."""
    dest = Path(dest)
    if dest.is_symlink() and not dest.exists():
        raise SparseEditError(f"{flag} {dest}: is a dangling symbolic link; remove it or pick another path")
    target = _resolved(dest)
    for input_flag, path in inputs:
        source = _resolved(Path(path))
        if source == target:
            raise SparseEditError(f"{flag} {dest}: is the input {input_flag} {path}; inputs are never modified")
        if _contains(source, target):
            raise SparseEditError(
                f"{flag} {dest}: lies inside the input {input_flag} {path}; pick a path outside it"
            )
        if _contains(target, source):
            raise SparseEditError(
                f"{flag} {dest}: contains the input {input_flag} {path}; replacing it would delete that input"
            )
    ancestor = target.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SparseEditError(f"{flag} {dest}: {ancestor} is a file, not a folder; pick another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise SparseEditError(f"{flag} {dest}: no permission to write in {ancestor}")
    if not dest.exists():
        return
    if not overwrite:
        raise SparseEditError(f"{flag} {dest}: already exists; pass --overwrite to replace it")
    if not written_by(command, dest):
        raise SparseEditError(
            f"{flag} {dest}: exists and was not written by sparse-edit {command}; --overwrite only replaces an "
            "earlier output of the same command, so remove it yourself or pick another path"
        )


def check_store(flag: str, store: Path, inputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse a store the run reads and writes (``tune --storage``, ``eval --base-cache``) that is, lies inside or
    contains an input: the run would write into that input."""
    target = _resolved(store)
    for input_flag, path in inputs:
        source = _resolved(path)
        if source == target:
            raise SparseEditError(f"{flag} {store}: is the input {input_flag} {path}; inputs are never modified")
        if _contains(source, target):
            raise SparseEditError(
                f"{flag} {store}: lies inside the input {input_flag} {path}, which would then be modified; "
                "pick a path outside it"
            )
        if _contains(target, source):
            raise SparseEditError(
                f"{flag} {store}: contains the input {input_flag} {path}; keep inputs and the files the run "
                "writes apart"
            )


# ---- one writer per destination --------------------------------------------------------------

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


# ---- staging -------------------------------------------------------------------------------


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
