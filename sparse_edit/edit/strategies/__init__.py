"""Edit strategies, one module each, and the registry apply reads them from.

A built-in strategy ``NAME`` (``strategy_names.BUILT_IN``) lives in ``sparse_edit.edit.strategies.NAME``
and defines ``STRATEGY``, an instance of ``Strategy`` (see ``base``); one from another package is found by
its entry point (``strategy_names.plugged_in``). Both are imported on first use, so naming the strategies
costs nothing. ``paper+detector`` names a chain: each part solved in turn at every layer of the edit, on
features collected with the earlier parts' edits applied.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

from sparse_edit.errors import SparseEditError
from sparse_edit.strategy_names import BUILT_IN, CHAIN, all_parts, chain_parts, plugged_in, registered

__all__ = [
    "BUILT_IN",
    "CHAIN",
    "all_parts",
    "chain_parts",
    "describe_registered",
    "get",
    "markdown_table",
    "registered",
]

if TYPE_CHECKING:
    from sparse_edit.edit.strategies.base import Strategy


@cache
def get(name: str) -> Strategy:
    """The registered strategy ``name``."""
    from sparse_edit.edit.strategies.base import Strategy
    from sparse_edit.options import ApplyOptions

    if name in BUILT_IN:
        strategy = importlib.import_module(f"sparse_edit.edit.strategies.{name}").STRATEGY
    else:
        entry = plugged_in().get(name)
        if entry is None:
            raise KeyError(f"no strategy {name!r}; registered: {', '.join(registered())}")
        strategy = entry.load()
        if isinstance(strategy, type):
            strategy = strategy()
    where = f"strategy {name!r}"
    if not isinstance(strategy, Strategy) or strategy.name != name:
        raise SparseEditError(f"{where}: its entry point must give a Strategy whose name is {name!r}")
    foreign = sorted(set(strategy.settings_model.model_fields) - set(ApplyOptions.model_fields))
    if foreign:
        raise SparseEditError(f"{where}: its settings {foreign} are not apply settings")
    return strategy


TABLE_HEADER = ("| strategy | keys | target | weights written |", "|---|---|---|---|")


def markdown_table(names: Iterable[str] | None = None) -> str:
    """The strategy table of docs/method.md, one row per registered strategy, from the strategies themselves."""
    rows = list(TABLE_HEADER)
    for name in registered() if names is None else names:
        strategy = get(name)
        row = strategy.table_row
        cells = (row.keys, row.target, row.writes) if row is not None else (strategy.summary, "", "")
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def describe_registered() -> list[dict[str, Any]]:
    """Every registered strategy: its name, where it comes from, what it edits and the settings it reads."""
    found = []
    for name in registered():
        strategy = get(name)
        found.append(
            {
                "name": name,
                "from": "built in" if name in BUILT_IN else plugged_in()[name].value,
                "summary": strategy.summary,
                "settings": ["--" + field.replace("_", "-") for field in strategy.settings_model.model_fields],
                "tunes": [tunable.field for tunable in strategy.search_space],
            }
        )
    return found
