"""Decoder layers whose ``forward`` is replaced while a context is active, and the stack cut after a layer.

Both the trunk replay and the cut patch the instance's ``forward`` (never the class), restore it on exit
and wrap whatever ``forward`` is in effect, so patches nest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sparse_edit.model.loading import LoadedModel

Forward = Callable[..., Any]


@contextmanager
def patched_forwards(
    layers: torch.nn.ModuleList, indices: Iterable[int], make: Callable[[int, Forward], Forward]
) -> Iterator[None]:
    """``layers[i].forward`` is ``make(i, forward in effect)`` for every ``i`` in ``indices`` while active."""
    patched: list[tuple[torch.nn.Module, Any]] = []
    try:
        for index in indices:
            layer = layers[index]
            patched.append((layer, layer.__dict__.get("forward")))  # an outer patch's, when nested
            layer.forward = make(index, layer.forward)
        yield
    finally:
        for layer, before in reversed(patched):
            if before is None:
                del layer.forward
            else:
                layer.forward = before


@contextmanager
def stopping_after(loaded: LoadedModel, last: int) -> Iterator[None]:
    """Passes inside compute decoder layers ``0..last`` as usual; every layer above hands on ``last``'s output
    without computing (for readers of layers up to ``last``, whose later results would be thrown away).
    The hidden states and logits past ``last`` are meaningless while active."""
    layers = loaded.family.layers(loaded.model)
    if not 0 <= last < len(layers):
        raise ValueError(f"layer {last} outside 0..{len(layers) - 1}")
    output: list[Any] = [None]

    def make(index: int, original: Forward) -> Forward:
        def keep(*args: Any, **kwargs: Any) -> Any:
            output[0] = original(*args, **kwargs)
            return output[0]

        def skip(*_args: Any, **_kwargs: Any) -> Any:
            return output[0]

        return keep if index == last else skip

    if last == len(layers) - 1:
        yield
        return
    with patched_forwards(layers, range(last, len(layers)), make):
        yield
