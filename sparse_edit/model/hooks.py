"""Forward hooks that capture, per layer, the MLP input or the neuron activations.

The neuron activation of a layer is the input of its MLP output projection
(``down_proj`` / ``c_proj``); the MLP input is the input of the MLP module (after the
pre-MLP norm). Both are read with forward pre-hooks, so the model runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch

from sparse_edit.architectures import Family

HookSite = Literal["neurons", "mlp_input"]  # the sites a forward hook reads (features.Site adds the residual)
Pooling = Literal["last", "mean", "max"]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """[B, T, D] activations -> [B, D], using the attention mask (left padding)."""
    if how == "last":
        return hidden[:, -1, :]
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    filled = hidden.masked_fill(weights == 0, float("-inf"))
    return filled.max(1).values


def site_module(family: Family, model: torch.nn.Module, layer: int, site: HookSite) -> torch.nn.Module:
    return family.out_proj(model, layer) if site == "neurons" else family.mlp(model, layer)


@contextmanager
def capture(
    family: Family,
    model: torch.nn.Module,
    layers: Sequence[int],
    site: HookSite,
    sink: Callable[[int, torch.Tensor], None],
) -> Iterator[None]:
    """Call ``sink(layer, activation[B, T, D])`` for every forward pass while active."""
    handles = []

    def make_hook(layer: int) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None) -> None:
            tensor = args[0] if args else next(iter((kwargs or {}).values()))
            sink(layer, tensor.detach())

        return hook

    try:
        for layer in layers:
            module = site_module(family, model, layer, site)
            handles.append(module.register_forward_pre_hook(make_hook(layer), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def run_base(model: Any, inputs: dict[str, torch.Tensor], hidden_states: bool = False) -> Any:
    """Forward through the decoder stack only; the LM head is not needed for activations."""
    return model.base_model(**inputs, use_cache=False, output_hidden_states=hidden_states)
