"""Features at candidate edit layers, collected in one forward pass per prompt list.

For each layer three sites can be read: the MLP input (``mlp_input``), the neuron
activations (``neurons``, optionally only a subset of them) and the layer's output in the
residual stream (``residual``). Prompts are either pooled into rows (the last ``positions``
tokens of each prompt, input order kept) or summed into a float64 Gram matrix over every
non-pad token (for the harmless preservation term), optionally with the pooled rows too;
per-dimension token sums and sums of squares can be kept for further sites. The layers above the
deepest one read are not computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from sparse_edit.console import Reporter
from sparse_edit.model.batching import Batch, Encoded, batch_memory_guard, batches
from sparse_edit.model.hooks import capture, run_base
from sparse_edit.model.layer_patch import stopping_after
from sparse_edit.model.loading import LoadedModel

Site = Literal["mlp_input", "neurons", "residual"]


@dataclass
class FeatureRequest:
    layers: Sequence[int]
    sites: Sequence[Site]
    neuron_subsets: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> indices kept for "neurons"
    positions: int = 1
    gram: bool = False
    tail_rows: bool = False  # with gram: also keep the last ``positions`` rows per prompt
    # Sites whose per-dimension sums and sums of squares over every non-pad token are kept (full width,
    # before any neuron subset); they need no rows or Gram of their own.
    moment_sites: Sequence[Site] = ()


@dataclass
class Features:
    rows: dict[tuple[Site, int], torch.Tensor]  # float32 [N * positions, D] (prompt-major)
    grams: dict[tuple[Site, int], torch.Tensor]  # float64 [D, D]
    tokens: int
    count: int
    sums: dict[tuple[Site, int], torch.Tensor] = field(default_factory=dict)  # float64 [D], over tokens
    squares: dict[tuple[Site, int], torch.Tensor] = field(default_factory=dict)  # float64 [D], over tokens

    def with_tokens_of(self, other: Features) -> Features:
        """These features with ``other``'s token statistics (Grams, sums, squares, token count) added; the
        rows and prompt count stay these."""

        def added(mine: dict[Any, torch.Tensor], theirs: dict[Any, torch.Tensor]) -> dict[Any, torch.Tensor]:
            if set(mine) != set(theirs):
                raise ValueError("token statistics of different sites or layers cannot be added")
            return {key: mine[key] + theirs[key] for key in mine}

        return Features(
            self.rows,
            added(self.grams, other.grams),
            self.tokens + other.tokens,
            self.count,
            added(self.sums, other.sums),
            added(self.squares, other.squares),
        )


def counted_mask(batch: Batch) -> torch.Tensor:
    """The tokens whose statistics count: the attention mask, cut to ``counted_tail`` where items set it."""
    mask = batch.attention_mask
    if all(item.counted_tail is None for item in batch.items):
        return mask
    mask = mask.clone()
    width = mask.shape[1]
    for row, item in enumerate(batch.items):
        if item.counted_tail is not None:
            mask[row, : width - item.counted_tail] = 0
    return mask


def _tail(activation: torch.Tensor, positions: int) -> torch.Tensor:
    """[B, T, D] -> [B, positions, D]: the last tokens (left padding puts them at the end)."""
    return activation[:, -positions:, :]


def _bind(add: Callable[[Site, int, torch.Tensor], None], site: Site) -> Callable[[int, torch.Tensor], None]:
    return lambda layer, activation: add(site, layer, activation)


def collect(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    request: FeatureRequest,
    batch_size: int,
    reporter: Reporter,
    label: str,
) -> Features:
    position = {id(item): i for i, item in enumerate(encoded)}
    rows: dict[tuple[Site, int], list[tuple[int, torch.Tensor]]] = {}
    grams: dict[tuple[Site, int], torch.Tensor] = {}
    sums: dict[tuple[Site, int], torch.Tensor] = {}
    squares: dict[tuple[Site, int], torch.Tensor] = {}
    state: dict[str, object] = {}
    tokens = 0

    def add(site: Site, layer: int, activation: torch.Tensor) -> None:
        mask = state["mask"]
        assert isinstance(mask, torch.Tensor)
        keep = mask.to(activation.device).bool()
        key = (site, layer)
        # Every non-pad token, full width, float64; the Gram reuses it unless a neuron subset narrows the site.
        full = activation[keep].to(torch.float64) if site in request.moment_sites else None
        if full is not None:
            first, second = full.sum(0).cpu(), (full**2).sum(0).cpu()
            sums[key] = sums[key] + first if key in sums else first
            squares[key] = squares[key] + second if key in squares else second
        if site not in request.sites:
            return
        if site == "neurons" and layer in request.neuron_subsets:
            activation = activation.index_select(-1, request.neuron_subsets[layer].to(activation.device))
            full = None
        if request.gram:
            if site != "residual":  # keys only: the residual stream is where edits aim, never what they read
                x = full if full is not None else activation[keep].to(torch.float64)
                update = (x.T @ x).cpu()
                grams[key] = grams[key] + update if key in grams else update
            if not request.tail_rows:
                return
        tail = _tail(activation, request.positions).float().cpu()
        indices = state["positions"]
        assert isinstance(indices, list)
        for index, block in zip(indices, tail, strict=True):
            rows.setdefault((site, layer), []).append((index, block))

    layers = list(request.layers)
    hook_sites = list(dict.fromkeys(s for s in [*request.sites, *request.moment_sites] if s != "residual"))
    pad = int(loaded.tokenizer.pad_token_id)
    with reporter.progress(label, len(encoded)) as progress, stopping_after(loaded, max(layers)):
        contexts = [capture(loaded.family, loaded.model, layers, site, _bind(add, site)) for site in hook_sites]
        for context in contexts:
            context.__enter__()
        try:
            for batch in batches(encoded, batch_size, pad):
                mask = counted_mask(batch)
                state["mask"] = mask
                state["positions"] = [position[id(item)] for item in batch.items]
                with batch_memory_guard(batch_size), torch.inference_mode():
                    output = run_base(
                        loaded.model,
                        batch.model_inputs(loaded.input_device),
                        hidden_states="residual" in request.sites,
                    )
                if "residual" in request.sites:
                    for layer in layers:
                        add("residual", layer, output.hidden_states[layer + 1])
                tokens += int(mask.sum())
                progress.advance(len(batch.items))
        finally:
            for context in reversed(contexts):
                context.__exit__(None, None, None)
    stacked = {
        key: torch.cat([block for _, block in sorted(pairs, key=lambda p: p[0])]) for key, pairs in rows.items()
    }
    return Features(stacked, grams, tokens, len(encoded), sums, squares)
