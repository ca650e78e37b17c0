"""Command-line flags generated from the options models: one declaration per setting.

Every field of an options model becomes ``--field-name`` (booleans ``--x/--no-x``, lists
repeatable or several values after one flag), with the field's description as its help. An
unset flag is None and overrides nothing, so a config file's value holds unless a flag is given.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Union

import typer
import typer.core

from sparse_edit.options import ApplyOptions, EvalOptions, LocateOptions, Options, TuneOptions
from sparse_edit.options.base import FormerName, panel_of
from sparse_edit.options.gates import GateOptions
from sparse_edit.options.traits import COMMA_LIST, fields_with, short_flag


def _flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _list_flags(*models: type[Options]) -> frozenset[str]:
    """The flags of list settings: several values may follow one of them (--harmful a.jsonl b.jsonl)."""
    return frozenset(
        _flag_name(name)
        for model in models
        for name, field in model.model_fields.items()
        if _flag_type(field.annotation) is list
    )


def spread_multi_values(args: list[str]) -> list[str]:
    """Rewrite ``--flag a b`` as ``--flag a --flag b`` for list flags (click takes one value per flag).

    A value ends at the next token that starts with ``-``; the commands with list flags take no
    positional arguments, so nothing else can follow one.
    """
    spread: list[str] = []
    current: str | None = None
    for token in args:
        if token.startswith("-"):
            current = token if token in MULTI_VALUE_FLAGS else None
            spread.append(token)
        elif current is not None and spread[-1] != current:
            spread += [current, token]
        else:
            spread.append(token)
    return spread


class MultiValueGroup(typer.core.TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, spread_multi_values(list(args)))


def _flag_type(annotation: Any) -> type:
    """The type a flag parses: the field's scalar type (the options model validates the rest)."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is list:
        return list
    if annotation in (bool, int, float):
        return annotation
    return str  # paths, literals and strings: checked by the options model


MULTI_VALUE_FLAGS = _list_flags(LocateOptions, ApplyOptions, EvalOptions, TuneOptions, GateOptions)


def field_parameters(model: type[Options], note: Mapping[str, str]) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``model``, annotated for typer."""
    params = []
    for name, field in model.model_fields.items():
        flag = _flag_name(name)
        kind = _flag_type(field.annotation)
        help_text = " ".join(filter(None, [field.description, note.get(name)]))
        panel = panel_of(model, name)
        if kind is bool:
            option = typer.Option(f"{flag}/--no-{name.replace('_', '-')}", help=help_text, rich_help_panel=panel)
            annotation: Any = Annotated[bool | None, option]
        else:
            former = [_flag_name(item.name) for item in field.metadata if isinstance(item, FormerName)]
            names = [flag, *filter(None, [short_flag(model, name)]), *former]
            option = typer.Option(*names, help=help_text, rich_help_panel=panel)
            flag_type = list[str] if kind is list else kind
            annotation = Annotated[flag_type | None, option]
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return params


COMMON = [
    inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[
            Path | None, typer.Option("--config", "-c", help="TOML file with the settings; flags override it.")
        ],
    ),
    inspect.Parameter(
        "quiet",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors on stderr.")],
    ),
    inspect.Parameter(
        "as_json",
        inspect.Parameter.KEYWORD_ONLY,
        default=False,
        annotation=Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON object on stdout.")],
    ),
]


def given(model: type[Options], values: Mapping[str, Any]) -> dict[str, Any]:
    """The flags the user gave: unset flags (None, empty) override nothing; comma lists (``COMMA_LIST``
    settings; never paths, which may hold commas) are split."""
    comma_lists = fields_with(model, COMMA_LIST)
    settings = {}
    for name, value in values.items():
        if name in comma_lists and value:
            value = [part.strip() for item in value for part in item.split(",") if part.strip()]
        if value is None or value == []:
            continue
        settings[name] = value
    return settings


def options_command(
    model: type[Options],
    run: Callable[[Path | None, dict[str, Any], Any, bool], None],
    note: Mapping[str, str] | None = None,
) -> Callable[..., None]:
    """A typer command whose flags are ``model``'s fields; it calls ``run(config, settings, reporter, as_json)``."""

    def handler(**values: Any) -> None:
        from sparse_edit.console import Reporter

        config, quiet, as_json = values.pop("config"), values.pop("quiet"), values.pop("as_json")
        run(config, given(model, values), Reporter(quiet=quiet), as_json)

    params = [COMMON[0], *field_parameters(model, note or {}), *COMMON[1:]]
    handler.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    handler.__annotations__ = {param.name: param.annotation for param in params}
    handler.__doc__ = run.__doc__
    handler.__name__ = run.__name__.removesuffix("_command")
    return handler
