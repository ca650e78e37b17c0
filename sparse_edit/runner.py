"""One runner for every command that writes: check, claim, work, write staged, return the typed result.

Each command names its steps (``Steps``); ``run_command`` runs them in the same order for all of them:

1. ``check``: what can fail before any work (settings against each other, files that must exist); what it
   returns (parsed settings, say) is handed to the work, so nothing is checked twice;
2. the paths the command reads are listed (from the options' roles) and the output is claimed: one run per
   destination, never over an input, ``overwrite`` only over an earlier output of the same command;
3. ``work``: the long part (forward passes, solves, replies);
4. ``write``: the output, staged and renamed into place, and the typed result the files hold.

A command without an output (``locate`` in memory, a ``tune --worker``) claims nothing and writes only what
its ``write`` step decides.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from sparse_edit.console import Reporter
from sparse_edit.io.claims import claimed_output
from sparse_edit.io.destination import Command
from sparse_edit.io.inputs import command_inputs

OptionsT = TypeVar("OptionsT", bound=BaseModel)
CheckedT = TypeVar("CheckedT")
WorkT = TypeVar("WorkT")
ResultT = TypeVar("ResultT")


def _writes_output(options: Any) -> bool:
    return getattr(options, "output", None) is not None


@dataclass(frozen=True)
class Steps(Generic[OptionsT, CheckedT, WorkT, ResultT]):
    """A command's steps; ``claims`` says whether this run writes ``options.output`` (and so claims it)."""

    name: Command
    check: Callable[[OptionsT], CheckedT]
    work: Callable[[OptionsT, CheckedT, Reporter], WorkT]
    write: Callable[[OptionsT, WorkT, Reporter], ResultT]
    claims: Callable[[OptionsT], bool] = _writes_output


def run_command(
    steps: Steps[OptionsT, CheckedT, WorkT, ResultT],
    options: OptionsT,
    reporter: Reporter,
    config: Path | None = None,
) -> ResultT:
    """Run ``steps`` on ``options``; ``config``: the TOML file the options came from (an input like any other)."""
    checked = steps.check(options)
    inputs = command_inputs(options, config)  # also refuses a store (a journal, say) inside an input
    claim: AbstractContextManager[None] = nullcontext()
    if steps.claims(options):
        output = Path(options.output)  # type: ignore[attr-defined]  # claims() said there is one
        claim = claimed_output(output, steps.name, inputs, bool(getattr(options, "overwrite", False)))
    with claim:
        return steps.write(options, steps.work(options, checked, reporter), reporter)
