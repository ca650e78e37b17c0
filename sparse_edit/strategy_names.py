"""The registered strategies' names and the chain syntax: a leaf module.

Option validation reads the names from here, so the options never import the strategies (which
import the options); the registry in ``sparse_edit.edit.strategies`` loads a strategy by its name.
Adding a strategy: its module in ``strategies/`` and its name below.
"""

from __future__ import annotations

from collections.abc import Iterable

# In the order --help lists them (the default strategy is ApplyOptions.strategy's: paper).
NAMES: tuple[str, ...] = ("output", "detector", "paper")
CHAIN = "+"


def chain_parts(name: str) -> tuple[str, ...]:
    """The registered strategies ``name`` stands for, in order: itself, or a chain's parts."""
    return tuple(name.split(CHAIN))


def all_parts(names: Iterable[str]) -> list[str]:
    """Every registered strategy the names (strategies and chains) use, once each, in order."""
    return list(dict.fromkeys(part for name in names for part in chain_parts(name)))
