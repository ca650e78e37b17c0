"""Candidate edits: each planned strategy (or chain) solved at each layer set; later steps see the earlier edits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparse_edit.console import Reporter
from sparse_edit.edit.anchors import Anchors
from sparse_edit.edit.delta import SliceEdit, applied_in_memory
from sparse_edit.edit.gather import gather
from sparse_edit.edit.layer_data import LayerData
from sparse_edit.edit.plan import Plan
from sparse_edit.edit.strategies import chain_parts
from sparse_edit.edit.strategies.base import SolveJob
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.model.loading import LoadedModel
from sparse_edit.model.trunk import TrunkCache
from sparse_edit.options import ApplyOptions


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
    stored_dtypes: dict[str, torch.dtype],
    reporter: Reporter,
    shared: dict[int, LayerData] | None = None,
    trunk: TrunkCache | None = None,
) -> list[Candidate]:
    """Every (strategy, layer set) of the plan, solved; single layers share one round of feature passes.

    ``shared`` holds features collected earlier for single layers (tune's cache): those are not collected again.
    ``trunk`` replays the layers below the plan's in every feature pass (default: one of its own where a
    candidate takes more than one step, whose later passes see the same anchors with an edit above it).
    """
    plan_layers = sorted({layer for layers in plan.layer_sets for layer in layers})
    if trunk is None:
        sequential = any(
            len(ls) * len(chain_parts(name)) > 1 for ls in plan.layer_sets for name in plan.strategies
        )
        trunk = TrunkCache(loaded, min(plan_layers) if sequential else 0)
    shared = dict(shared or {})
    singles = sorted({ls[0] for ls in plan.layer_sets if len(ls) == 1} - set(shared))
    candidates = []
    with trunk.replaying(plan_layers):
        if singles:
            shared.update(gather(loaded, anchors, singles, plan, options, reporter))
        for name in plan.strategies:
            parts = chain_parts(name)
            for layers in plan.layer_sets:
                candidate = Candidate(name, layers)
                steps = [
                    Step(part, position, first=not position and not i)
                    for position in range(len(layers))
                    for i, part in enumerate(parts)
                ]
                per_layer = [
                    solve_step(loaded, anchors, plan, options, stored_dtypes, reporter, candidate, step, shared)
                    for step in steps
                ]
                candidate.diagnostics = summarise_layers(per_layer)
                candidate.diagnostics["changed_parameters"] = sum(e.changed_parameters for e in candidate.edits)
                candidates.append(candidate)
    return candidates


@dataclass(frozen=True)
class Step:
    """One solve of a candidate: a registered strategy (a chain's part) at one of its layers."""

    part: str
    position: int  # index into the candidate's layers
    first: bool  # nothing edited before it


def solve_step(
    loaded: LoadedModel,
    anchors: Anchors,
    plan: Plan,
    options: ApplyOptions,
    stored_dtypes: dict[str, torch.dtype],
    reporter: Reporter,
    candidate: Candidate,
    step: Step,
    shared: dict[int, LayerData],
) -> dict[str, Any]:
    """Solve one step of the candidate, add its edits, and return that step's diagnostics."""
    checkpoint = loaded.checkpoint
    layers, layer = candidate.layers, candidate.layers[step.position]
    if step.first and layer in shared:
        data = shared[layer]  # nothing edited yet: the features collected for this layer alone
    else:
        # Sequential: features come from the model with the earlier steps' edits applied.
        with applied_in_memory(
            loaded.model, candidate.edits, stored_dtypes_for(checkpoint, candidate.edits, stored_dtypes)
        ):
            data = gather(loaded, anchors, [layer], plan, options, reporter)[layer]
    strategy = plan.strategy(step.part)
    job = SolveJob(
        layer=layer,
        data=data,
        neurons=plan.neurons.get((step.part, layer)),
        checkpoint=checkpoint,
        settings=plan.settings[step.part],
        share=1.0 / (len(layers) - step.position),  # the remaining gap, spread over the layers left
        avoid=chain_neurons(candidate, plan, layer, step.part),
    )
    edits, diagnostics = strategy.solve(job)
    if diagnostics["jitter"]:
        reporter.warn(f"{step.part} layer {layer}: Cholesky needed jitter {diagnostics['jitter']:.3g}")
    chained = len(chain_parts(candidate.strategy)) > 1
    if chained:
        require_disjoint(candidate, edits, step.part)
        if strategy.gram_site is None:
            for edit in edits:
                edit.leak_checked = False  # the layer's stored Gram belongs to the chain's low-rank part
    candidate.edits += edits
    if strategy.gram_site is not None:
        # The harmless Gram of this layer's keys, as the solve saw it: verify recomputes the leak.
        candidate.grams[layer] = data.harmless_gram[strategy.gram_site]
        candidate.gram_tokens = data.harmless_tokens
    return {
        "layer": layer,
        **({"strategy": step.part} if chained else {}),
        "neurons": int(edits[0].neurons.numel()),
        **plan.notes.get((step.part, layer), {}),
        **diagnostics,
    }


def chain_neurons(candidate: Candidate, plan: Plan, layer: int, part: str) -> torch.Tensor | None:
    """Neurons the chain's other parts edit at ``layer``: the earlier parts' edits and the later parts' plans."""
    others = [name for name in chain_parts(candidate.strategy) if name != part]
    if not others:
        return None
    taken = [edit.neurons for edit in candidate.edits if edit.layer == layer]
    taken += [plan.neurons[(name, layer)] for name in others if (name, layer) in plan.neurons]
    return torch.unique(torch.cat(taken)) if taken else None


def require_disjoint(candidate: Candidate, edits: Sequence[SliceEdit], part: str) -> None:
    """A chain's parts edit different rows: each edit is solved against the original rows it replaces."""
    taken = {row for edit in candidate.edits for row in edit_rows(edit)}
    for edit in edits:
        if taken & edit_rows(edit):
            raise SparseEditError(
                f"--strategy {candidate.strategy}: {part} at layer {edit.layer} would edit rows of "
                f"{edit.slice.tensor} that an earlier part of the chain edits; chain it in another order or at "
                "another layer"
            )


def edit_rows(edit: SliceEdit) -> set[tuple[str, int, int]]:
    """(tensor, axis, row) of every weight vector ``edit`` changes."""
    return {(edit.slice.tensor, edit.slice.axis, edit.slice.offset + int(n)) for n in edit.neurons.tolist()}


def stored_dtypes_for(
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
