"""The one exception type users see, and the exit codes the CLI uses."""

import contextlib
import json
from collections.abc import Iterator

EXIT_OK = 0
# A check the user asked for did not pass (verify failed, an eval gate tripped).
EXIT_CHECK_FAILED = 1
# Bad input, bad configuration or an environment problem: nothing was written.
EXIT_ERROR = 2


class SparseEditError(Exception):
    """A problem the user can fix.

    The message is one line that names the file or flag involved and says how to fix it.
    """


class CheckFailed(Exception):
    """A check the user asked for (verify, an eval gate) did not pass."""


# Failures of the environment or of an input file that reached the CLI without being named
# earlier; each becomes exit 2 and one line, never a traceback.
ENVIRONMENT_ERRORS = (SparseEditError, OSError, UnicodeDecodeError, json.JSONDecodeError, MemoryError)


def environment_message(exc: BaseException) -> str:
    """One line for an error: the user's own message, or what failed and on which path."""
    if isinstance(exc, SparseEditError):
        return str(exc)
    if isinstance(exc, MemoryError) or is_out_of_memory(exc):
        return "ran out of memory; lower --batch-size or --max-length, or use a machine with more memory"
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}".splitlines()[0]
    if isinstance(exc, UnicodeDecodeError):
        return f"an input is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return f"an input is not valid JSON ({exc.msg}, line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (a RuntimeError), recognised without importing torch."""
    return type(exc).__name__ == "OutOfMemoryError"


@contextlib.contextmanager
def reading(where: str) -> Iterator[None]:
    """Turn a read that fails (not UTF-8, unreadable) into one line naming ``where``."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise SparseEditError(f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except FileNotFoundError:
        raise SparseEditError(f"{where}: no such file") from None
    except OSError as exc:
        raise SparseEditError(f"{where}: cannot be read ({exc.strerror})") from None
