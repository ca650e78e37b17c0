"""Candidate edits: each planned strategy solved at each layer set (sequential layers see the earlier edits)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparse_edit.config import ApplyOptions
from sparse_edit.console import Reporter
from sparse_edit.edit.anchors import Anchors
from sparse_edit.edit.delta import SliceEdit, applied_in_memory
from sparse_edit.edit.gather import LayerData, gather
from sparse_edit.edit.plan import Plan
from sparse_edit.edit.strategies.base import SolveJob
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.model.loading import LoadedModel


@dataclass
class Candidate:
    strategy: str
    layers: tuple[int, ...]
    edits: list[SliceEdit] = field(default_factory=list)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    grams: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> harmless Gram of its keys
    gram_tokens: int = 0

    @property
    def label(self) -> str:
        return f"{self.strategy}@{','.join(map(str, self.layers))}"


def build_candidates(
    loaded: LoadedModel,
    anchors: Anchors,
    plan: Plan,
    options: ApplyOptions,
    storage: dict[str, torch.dtype],
    reporter: Reporter,
    shared: dict[int, LayerData] | None = None,
) -> list[Candidate]:
    """Every (strategy, layer set) of the plan, solved; single layers share one round of feature passes.

    ``shared`` holds features collected earlier for single layers (tune's cache): those are not collected again.
    """
    shared = dict(shared or {})
    singles = sorted({ls[0] for ls in plan.layer_sets if len(ls) == 1} - set(shared))
    if singles:
        shared.update(gather(loaded, anchors, singles, plan, options, reporter))
    candidates = []
    for name in plan.strategies:
        for layers in plan.layer_sets:
            candidate = Candidate(name, layers)
            per_layer = [
                solve_step(loaded, anchors, plan, options, storage, reporter, candidate, step, shared)
                for step in range(len(layers))
            ]
            candidate.diagnostics = summarise_layers(per_layer)
            candidate.diagnostics["changed_parameters"] = sum(e.changed_parameters for e in candidate.edits)
            candidates.append(candidate)
    return candidates


def solve_step(
    loaded: LoadedModel,
    anchors: Anchors,
    plan: Plan,
    options: ApplyOptions,
    storage: dict[str, torch.dtype],
    reporter: Reporter,
    candidate: Candidate,
    step: int,
    shared: dict[int, LayerData],
) -> dict[str, Any]:
    """Solve the candidate's ``step``-th layer, add its edits, and return that layer's diagnostics."""
    checkpoint = loaded.checkpoint
    layers, layer = candidate.layers, candidate.layers[step]
    if step == 0 and layer in shared:
        data = shared[layer]  # nothing edited yet: the features collected for this layer alone
    else:
        # Sequential: features come from the model with the earlier layers' edits applied.
        with applied_in_memory(loaded.model, candidate.edits, storage_for(checkpoint, candidate.edits, storage)):
            data = gather(loaded, anchors, [layer], plan, options, reporter)[layer]
    strategy = plan.strategy(candidate.strategy)
    job = SolveJob(
        layer=layer,
        data=data,
        neurons=plan.neurons.get((candidate.strategy, layer)),
        checkpoint=checkpoint,
        options=options,
        share=1.0 / (len(layers) - step),  # the remaining gap, spread over the layers left
    )
    edits, diagnostics = strategy.solve(job)
    if diagnostics["jitter"]:
        reporter.warn(f"{candidate.strategy} layer {layer}: Cholesky needed jitter {diagnostics['jitter']:.3g}")
    candidate.edits += edits
    if strategy.gram_site is not None:
        # The harmless Gram of this layer's keys, as the solve saw it: verify recomputes the leak.
        candidate.grams[layer] = data.safe_gram[strategy.gram_site]
        candidate.gram_tokens = data.safe_tokens
    return {
        "layer": layer,
        "neurons": int(edits[0].neurons.numel()),
        **plan.notes.get((candidate.strategy, layer), {}),
        **diagnostics,
    }


def storage_for(
    checkpoint: Checkpoint, edits: Sequence[SliceEdit], known: dict[str, torch.dtype]
) -> dict[str, torch.dtype]:
    """The checkpoint dtype of every tensor ``edits`` touch (the in-memory edit rounds as the file will)."""
    for edit in edits:
        known.setdefault(edit.slice.tensor, checkpoint.torch_dtype(edit.slice.tensor))
    return known


def summarise_layers(per_layer: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per candidate: worst fit/leak over its layers, plus the per-layer details."""
    summary: dict[str, Any] = {"neurons": sum(row["neurons"] for row in per_layer), "per_layer": per_layer}
    for key in ("fit_train", "fit_dev", "leak_train", "leak_dev", "relative_norm"):
        values = [row[key] for row in per_layer if isinstance(row.get(key), float)]
        if values:
            summary[key] = max(values)
    summary["rank"] = max(row["rank"] for row in per_layer)
    summary["nullspace_dim"] = per_layer[0]["nullspace_dim"]
    return summary
