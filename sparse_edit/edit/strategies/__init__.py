"""Edit strategies, one module each, and the registry apply reads them from.

``NAMES`` is the registry: a strategy ``NAME`` lives in ``sparse_edit.edit.strategies.NAME`` and
defines ``STRATEGY``, an instance of ``Strategy`` (see ``base``). The modules are imported on
first use, so naming the strategies costs nothing. Adding a strategy: one module here, its name
below, and its tests. ``paper+detector`` names a chain: each part solved in turn at every layer
of the edit, on features collected with the earlier parts' edits applied.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sparse_edit.edit.strategies.base import Strategy

# In the order --help lists them; the first is the default.
NAMES: tuple[str, ...] = ("output", "detector", "paper")
CHAIN = "+"


def chain_parts(name: str) -> tuple[str, ...]:
    """The registered strategies ``name`` stands for, in order: itself, or a chain's parts."""
    return tuple(name.split(CHAIN))


def all_parts(names: Iterable[str]) -> list[str]:
    """Every registered strategy the names (strategies and chains) use, once each, in order."""
    return list(dict.fromkeys(part for name in names for part in chain_parts(name)))


@cache
def get(name: str) -> Strategy:
    """The registered strategy ``name``."""
    if name not in NAMES:
        raise KeyError(f"no strategy {name!r}; registered: {', '.join(NAMES)}")
    module = importlib.import_module(f"sparse_edit.edit.strategies.{name}")
    strategy: Strategy = module.STRATEGY
    return strategy
