"""The ``sparse-edit`` command: a thin layer over the library functions."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from sparse_edit.errors import EXIT_CHECK_FAILED, EXIT_ERROR, CheckFailed, SparseEditError

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="sparse-edit",
    help="Find safety neurons and write a closed-form sparse edit that carries refusals across languages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def root() -> None:
    """Find safety neurons and write a closed-form sparse edit that carries refusals across languages."""


JsonFlag = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON object on stdout.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")]


def command(func: Callable[P, R]) -> Callable[P, R]:
    """Register a subcommand whose user errors become one line on stderr and a documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            return func(*args, **kwargs)
        except SparseEditError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_ERROR) from None
        except CheckFailed as exc:
            typer.echo(f"failed: {exc}", err=True)
            raise typer.Exit(EXIT_CHECK_FAILED) from None

    app.command()(wrapper)
    return wrapper


def _print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, sort_keys=True, default=str))


def _print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@command
def inspect(
    path: Annotated[Path, typer.Argument(help="A model folder or a sparse-edit artifact (.safetensors).")],
    as_json: JsonFlag = False,
) -> None:
    """Summarise a checkpoint (family, sizes, dtypes, shards) or a sparse-edit artifact."""
    from sparse_edit.inspection import describe

    summary = describe(path)
    if as_json:
        _print_json(summary)
        return
    _print_table([(key, _format_value(value)) for key, value in summary.items()])


def _format_value(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def main() -> None:
    """Console entry point."""
    app()
