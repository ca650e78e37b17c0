"""The options base class and how a run's settings are merged: defaults, a TOML file, then flags."""

from __future__ import annotations

import inspect
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from sparse_edit.errors import SparseEditError, reading

T = TypeVar("T", bound="Options")


@dataclass(frozen=True)
class FormerName:
    """Field metadata: an earlier name of the setting, still accepted as a flag and a TOML key (the field
    also lists it in its ``validation_alias``)."""

    name: str


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # The --help panel of the fields a class declares itself (None: the command's own panel), and the TOML table
    # that may hold them (a strategy's name: [detector] detector_margin = 2 as well as the flat key).
    panel: ClassVar[str | None] = None
    table: ClassVar[str | None] = None

    @classmethod
    def help(cls, field: str) -> str:
        description = cls.model_fields[field].description
        assert description, f"{cls.__name__}.{field} needs a description"
        return description

    @classmethod
    def of(cls: type[T], options: Options) -> T:
        """This model's fields read off a command's options, which hold the fields of every part they are made of."""
        return cls.model_validate({name: getattr(options, name) for name in cls.model_fields})


def read_config(config_file: Path | None) -> dict[str, Any]:
    if config_file is None:
        return {}
    if config_file.is_dir():
        raise SparseEditError(f"--config {config_file}: is a folder; point it at a TOML file")
    with reading(f"--config {config_file}"):
        text = config_file.read_text(encoding="utf-8")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SparseEditError(f"--config {config_file}: not valid TOML ({exc})") from exc


def declaring_class(model: type[Options], name: str) -> type[Options]:
    """The class of ``model``'s bases that declares the field ``name`` (the first in method resolution order)."""
    return next(cls for cls in model.__mro__ if issubclass(cls, Options) and name in inspect.get_annotations(cls))


def panel_of(model: type[Options], name: str) -> str | None:
    """The --help panel of ``model``'s field ``name``: its declaring class's own ``panel``."""
    return vars(declaring_class(model, name)).get("panel")


def tables(model: type[Options]) -> dict[str, type[Options]]:
    """The TOML tables ``model`` accepts: table name -> the settings class whose fields it may hold."""
    return {vars(cls)["table"]: cls for cls in model.__mro__ if vars(cls).get("table")}


def flat_config(model: type[Options], config: dict[str, Any], where: str) -> dict[str, Any]:
    """``config`` with each strategy table's keys moved to the top level (flat keys keep working); a key of a
    table that is not that strategy's setting, or one set twice to different values, is refused."""
    accepted = tables(model)
    flat = {key: value for key, value in config.items() if not (key in accepted and isinstance(value, dict))}
    for table, cls in accepted.items():
        section = config.get(table)
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            if key not in cls.model_fields:
                known = ", ".join(sorted(cls.model_fields))
                raise SparseEditError(f"{where}: [{table}] {key}: not a {table} setting; its settings: {known}")
            if key in flat and flat[key] != value:
                raise SparseEditError(f"{where}: {key} is set twice, in [{table}] and elsewhere; keep one")
            flat[key] = value
    return flat


def load_options(
    model: type[T], config_file: Path | None, overrides: dict[str, Any], defaults: dict[str, Any] | None = None
) -> T:
    """Merge defaults, a TOML file and command-line overrides (in that order) into one validated object."""
    values = dict(defaults or {})
    values.update(flat_config(model, read_config(config_file), str(config_file)))
    values.update({key: value for key, value in overrides.items() if value is not None})
    where = str(config_file) if config_file is not None else "command line"
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SparseEditError(_describe(exc, model, where)) from None


def _describe(exc: ValidationError, model: type[Options], where: str) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    if not key:  # a rule over several settings
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    flag = "--" + key.split(".")[0].replace("_", "-")
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(model.model_fields))
        return f"{where}: unknown setting {key!r}; known settings: {known}"
    if error["type"] == "missing":
        return f"{where}: {key} is required; set it in the config file or pass {flag}"
    return f"{where}: {key} ({flag}): {error['msg']}"
