"""The one exception type users see, and the exit codes the CLI uses."""

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
