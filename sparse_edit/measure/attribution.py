"""Neurons chosen by effect: attribution patching of the refusal log-odds.

For a low-resource harmful prompt ``x`` with a reference-language counterpart ``x_ref``, the
first-order estimate of what patching neuron ``i``'s last-token activation from ``x_ref`` into
``x`` does to the refusal log-odds is

    (a_i(x_ref) − a_i(x)) · ∂ log-odds / ∂ a_i(x).

Summed over the training prompts this ranks the neurons of a layer by how much moving them
toward the reference pattern would raise refusal, which is what an edit of those neurons can
buy at best. The contrast rule of ``locate`` (harmful vs harmless z / Cohen's d) ranks them by
how differently they fire instead; the two can disagree.

The gradient is taken with the layer's neuron activations as a leaf (earlier layers detached,
weights frozen), so one backward pass per batch runs through the later layers only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from sparse_edit.console import Reporter
from sparse_edit.data.refusal import opening_token_ids, refusal_log_odds
from sparse_edit.errors import SparseEditError
from sparse_edit.model.batching import Encoded, batches
from sparse_edit.model.hooks import capture
from sparse_edit.model.loading import LoadedModel


def reference_activations(
    loaded: LoadedModel, reference: Sequence[Encoded], layer: int, batch_size: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Last-token neuron activations of the reference prompts at ``layer``: by prompt id, and their mean."""
    by_id: dict[str, torch.Tensor] = {}
    ids: list[str] = []

    def keep(_layer: int, activation: torch.Tensor) -> None:
        for prompt_id, row in zip(ids, activation[:, -1].float().cpu(), strict=True):
            by_id[prompt_id] = row

    with capture(loaded.family, loaded.model, [layer], "neurons", keep), torch.inference_mode():
        for batch in batches(reference, batch_size, int(loaded.tokenizer.pad_token_id)):
            ids[:] = [item.prompt.id for item in batch.items]
            loaded.model.base_model(**batch.model_inputs(loaded.input_device), use_cache=False)
    if not by_id:
        raise SparseEditError("attribution: no reference-language harmful prompts to compare with")
    return by_id, torch.stack(list(by_id.values())).mean(0)


def _leaf_hook(store: list[torch.Tensor]) -> Callable[..., tuple[Any, ...]]:
    def hook(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        leaf = args[0].detach().requires_grad_(True)
        store.append(leaf)
        return (leaf, *args[1:])

    return hook


def attribution_scores(
    loaded: LoadedModel,
    low: Sequence[Encoded],
    reference: Sequence[Encoded],
    layer: int,
    batch_size: int,
    reporter: Reporter,
) -> torch.Tensor:
    """Per-neuron attribution-patching score at ``layer`` (float64 [d_ff]), summed over ``low`` prompts.

    A low prompt is compared with the reference prompt of the same id, or with the reference mean
    when there is none. Positive = moving the neuron toward the reference raises refusal.
    """
    by_id, ref_mean = reference_activations(loaded, reference, layer, batch_size)
    module = loaded.family.out_proj(loaded.model, layer)
    total: torch.Tensor | None = None
    cache: dict[str, list[int]] = {}
    flags = [p.requires_grad for p in loaded.model.parameters()]
    for parameter in loaded.model.parameters():
        parameter.requires_grad_(False)
    try:
        with reporter.progress(f"attribution at layer {layer}", len(low)) as progress:
            for batch in batches(low, batch_size, int(loaded.tokenizer.pad_token_id)):
                store: list[torch.Tensor] = []
                handle = module.register_forward_pre_hook(_leaf_hook(store))
                try:
                    logits = loaded.model(**batch.model_inputs(loaded.input_device), use_cache=False).logits[:, -1]
                finally:
                    handle.remove()
                langs = [item.prompt.lang for item in batch.items]
                token_ids = [cache.setdefault(lang, opening_token_ids(loaded.tokenizer, lang)) for lang in langs]
                refusal_log_odds(logits, token_ids).sum().backward()
                (leaf,) = store
                assert leaf.grad is not None
                gradient = leaf.grad[:, -1].double().cpu()
                activation = leaf.detach()[:, -1].double().cpu()
                target = torch.stack([by_id.get(item.prompt.id, ref_mean) for item in batch.items]).double()
                contribution = ((target - activation) * gradient).sum(0)
                total = contribution if total is None else total + contribution
                progress.advance(len(batch.items))
    finally:
        for parameter, flag in zip(loaded.model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
    if total is None:
        raise SparseEditError("attribution: no low-resource harmful prompts to score")
    return total


def top_neurons(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices (sorted, int64) of the ``count`` highest positive scores."""
    order = torch.argsort(scores, descending=True, stable=True)[:count]
    chosen = order[scores[order] > 0]
    return torch.sort(chosen).values.to(torch.int64)
