"""Edit strategies, one module each, and the registry apply reads them from.

``NAMES`` (in ``strategy_names``) is the registry: a strategy ``NAME`` lives in
``sparse_edit.edit.strategies.NAME`` and defines ``STRATEGY``, an instance of ``Strategy`` (see
``base``). The modules are imported on first use, so naming the strategies costs nothing. Adding a
strategy: one module here, its name in ``strategy_names``, and its tests. ``paper+detector`` names a chain: each part solved in turn at every layer
of the edit, on features collected with the earlier parts' edits applied.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import TYPE_CHECKING

from sparse_edit import strategy_names
from sparse_edit.strategy_names import CHAIN, NAMES, all_parts, chain_parts

__all__ = ["CHAIN", "NAMES", "all_parts", "chain_parts", "get"]

if TYPE_CHECKING:
    from sparse_edit.edit.strategies.base import Strategy


@cache
def get(name: str) -> Strategy:
    """The registered strategy ``name``."""
    registered = strategy_names.NAMES  # read at call time, so a strategy named there is found
    if name not in registered:
        raise KeyError(f"no strategy {name!r}; registered: {', '.join(registered)}")
    module = importlib.import_module(f"sparse_edit.edit.strategies.{name}")
    strategy: Strategy = module.STRATEGY
    return strategy
