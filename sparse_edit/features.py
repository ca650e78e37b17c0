"""Features at candidate edit layers: pooled per-prompt vectors and streamed token Gram matrices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparse_edit.activations import Pooling, Site, capture, pool, run_base
from sparse_edit.console import Reporter
from sparse_edit.errors import SparseEditError
from sparse_edit.modeling import Encoded, LoadedModel, batches, out_of_memory_hint


def _forward(loaded: LoadedModel, inputs: dict[str, torch.Tensor], batch_size: int) -> None:
    try:
        with torch.inference_mode():
            run_base(loaded.model, inputs)
    except torch.OutOfMemoryError as exc:
        raise SparseEditError(out_of_memory_hint(batch_size)) from exc


def pooled_features(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    site: Site,
    batch_size: int,
    reporter: Reporter,
    pooling: Pooling = "last",
    label: str = "features",
) -> dict[int, torch.Tensor]:
    """Per layer, a float32 [N, D] matrix whose row i is prompt i pooled (input order kept)."""
    rows: dict[int, list[tuple[int, torch.Tensor]]] = {layer: [] for layer in layers}
    position = {id(item): i for i, item in enumerate(encoded)}
    state: dict[str, object] = {}

    def sink(layer: int, activation: torch.Tensor) -> None:
        mask = state["mask"]
        assert isinstance(mask, torch.Tensor)
        pooled = pool(activation, mask.to(activation.device), pooling).float().cpu()
        for index, vector in zip(state["positions"], pooled, strict=True):  # type: ignore[call-overload]
            rows[layer].append((index, vector))

    pad = int(loaded.tokenizer.pad_token_id)
    with (
        reporter.progress(label, len(encoded)) as progress,
        capture(loaded.family, loaded.model, layers, site, sink),
    ):
        for batch in batches(encoded, batch_size, pad):
            state["mask"] = batch.attention_mask
            state["positions"] = [position[id(item)] for item in batch.items]
            _forward(loaded, batch.model_inputs(loaded.input_device), batch_size)
            progress.advance(len(batch.items))
    return {layer: torch.stack([v for _, v in sorted(pairs, key=lambda p: p[0])]) for layer, pairs in rows.items()}


@dataclass
class TokenGram:
    gram: dict[int, torch.Tensor]  # layer -> [D, D] float64, Σ x xᵀ over non-pad tokens
    tokens: int


def token_gram(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    layers: Sequence[int],
    site: Site,
    batch_size: int,
    reporter: Reporter,
    label: str = "harmless tokens",
) -> TokenGram:
    """Σ x xᵀ over every non-pad token position, streamed in float64."""
    grams: dict[int, torch.Tensor] = {}
    state: dict[str, torch.Tensor] = {}
    tokens = 0

    def sink(layer: int, activation: torch.Tensor) -> None:
        mask = state["mask"].to(activation.device).bool()
        x = activation[mask].to(torch.float64)
        update = (x.T @ x).cpu()
        grams[layer] = grams[layer] + update if layer in grams else update

    pad = int(loaded.tokenizer.pad_token_id)
    with (
        reporter.progress(label, len(encoded)) as progress,
        capture(loaded.family, loaded.model, layers, site, sink),
    ):
        for batch in batches(encoded, batch_size, pad):
            state["mask"] = batch.attention_mask
            _forward(loaded, batch.model_inputs(loaded.input_device), batch_size)
            tokens += int(batch.attention_mask.sum())
            progress.advance(len(batch.items))
    return TokenGram(grams, tokens)
