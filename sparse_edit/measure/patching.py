"""The patching ceiling: what moving chosen neurons to the reference language's activations would buy."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sparse_edit.measure.probes import refusal_scores
from sparse_edit.model.batching import Batch, Encoded
from sparse_edit.model.hooks import capture
from sparse_edit.model.loading import LoadedModel


def patched_refusal_scores(
    loaded: LoadedModel,
    low: Sequence[Encoded],
    reference: Sequence[Encoded],
    sets: Mapping[int, torch.Tensor],
    batch_size: int,
) -> dict[str, list[float]]:
    """The patching ceiling: refusal log-odds of ``low`` prompts when, at every layer of ``sets``, those
    neurons' last-token activations are replaced by those of the reference prompt with the same id."""
    layers = sorted(sets)
    stored: dict[tuple[int, str], torch.Tensor] = {}
    ids: list[str] = []

    def keep(layer: int, activation: torch.Tensor) -> None:
        for prompt_id, row in zip(ids, activation[:, -1], strict=True):
            stored[(layer, prompt_id)] = row.index_select(0, sets[layer].to(row.device)).clone()

    def remember(batch: Batch) -> None:
        ids[:] = [item.prompt.id for item in batch.items]

    with capture(loaded.family, loaded.model, layers, "neurons", keep):
        refusal_scores(loaded, reference, batch_size, before_batch=remember)

    handles = []

    def make_hook(layer: int) -> Callable[..., Any]:
        def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            activation = args[0].clone()
            index = sets[layer].to(activation.device)
            for row, prompt_id in enumerate(ids):
                if (layer, prompt_id) in stored:
                    activation[row, -1, index] = stored[(layer, prompt_id)].to(activation.dtype)
            return (activation, *args[1:])

        return hook

    try:
        for layer in layers:
            handles.append(loaded.family.out_proj(loaded.model, layer).register_forward_pre_hook(make_hook(layer)))
        return refusal_scores(loaded, low, batch_size, before_batch=remember)
    finally:
        for handle in handles:
            handle.remove()
