"""The registered strategies' names and the chain syntax: a leaf module.

Option validation reads the names from here, so the options never import the strategies (which
import the options); the registry in ``sparse_edit.edit.strategies`` loads a strategy by its name.
The built-in strategies are modules of ``sparse_edit.edit.strategies`` named below. A strategy from
another package registers itself with an entry point in the group ``sparse_edit.strategies``
(``name = "module:STRATEGY"`` in its ``pyproject.toml``); reading entry points imports nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

# In the order --help lists them (the default strategy is ApplyOptions.strategy's: paper).
BUILT_IN: tuple[str, ...] = ("output", "detector", "paper")
ENTRY_POINT_GROUP = "sparse_edit.strategies"
CHAIN = "+"


def plugged_in() -> dict[str, EntryPoint]:
    """Strategies other installed packages register, by name (a built-in name cannot be taken)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in BUILT_IN}


def registered() -> tuple[str, ...]:
    """Every strategy apply can name: the built-in ones, then the plugged-in ones by name."""
    return (*BUILT_IN, *sorted(plugged_in()))


def chain_parts(name: str) -> tuple[str, ...]:
    """The registered strategies ``name`` stands for, in order: itself, or a chain's parts."""
    return tuple(name.split(CHAIN))


def all_parts(names: Iterable[str]) -> list[str]:
    """Every registered strategy the names (strategies and chains) use, once each, in order."""
    return list(dict.fromkeys(part for name in names for part in chain_parts(name)))
