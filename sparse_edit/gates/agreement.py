"""Does the written neuron fire where the screened gate does?

The detector neuron that ``apply --detector-gate`` rewrites computes ``act(k·g·x)·(u·x)`` with its gate row
``g`` (stored in the checkpoint's dtype). It fires when ``g·x > 0``. This module reads ``g`` back from the
edited checkpoint, runs the edited model over the cached prompts (one forward pass each, up to the gate's
layer) and compares where ``g·x > 0`` with where the gate, on the cached base-model states, fires.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparse_edit.console import Reporter
from sparse_edit.errors import SparseEditError
from sparse_edit.gates.cache import FeatureCache, collect_cache
from sparse_edit.gates.gate import Gate
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import MANIFEST_FILE


@dataclass(frozen=True)
class Agreement:
    share: float  # prompts where the written neuron and the gate agree
    prompts: int
    written_fires: float
    gate_fires: float


def written_gate_row(edited: Path, layer: int) -> np.ndarray:
    """The gate row of the detector neuron ``apply`` repurposed at ``layer``, as stored (float64 copy)."""
    manifest = json.loads((Path(edited) / MANIFEST_FILE).read_text(encoding="utf-8"))
    per_layer = [
        entry for entry in manifest.get("diagnostics", {}).get("per_layer", []) if entry.get("layer") == layer
    ]
    neuron = per_layer[0].get("repurposed_neuron") if len(per_layer) == 1 else None
    if isinstance(neuron, list) and len(neuron) == 2 and per_layer[0].get("detector_response") == "step":
        neuron = neuron[0]  # a step pair: the first neuron's gate row is the gate itself
    if manifest.get("strategy") != "detector" or not isinstance(neuron, int):
        raise SparseEditError(f"{edited}: no single detector neuron at layer {layer} in its manifest")
    checkpoint = Checkpoint.open(Path(edited))
    gate_slice = checkpoint.family.neuron_slice(layer, "gate", checkpoint.dims.mlp_width)
    row = gate_slice.read(checkpoint.load_tensor(gate_slice.tensor), torch.tensor([neuron]))[0]
    return row.to(torch.float64).numpy()


def agreement_on_states(gate: Gate, row: np.ndarray, states: np.ndarray, cached: np.ndarray) -> Agreement:
    """``states``: the MLP inputs the edited model computes; ``cached``: the base states the gate was screened on."""
    written, screened = states @ row > 0, gate.fires(cached)
    return Agreement(
        float((written == screened).mean()), len(states), float(written.mean()), float(screened.mean())
    )


def measure_agreement(
    edited_model: object, edited: Path, gate: Gate, cache: FeatureCache, batch_size: int, reporter: Reporter
) -> Agreement:
    """Run the edited model (a ``LoadedModel`` of ``edited``) over ``cache``'s prompts and compare."""
    layer = gate.settings.layer
    row = written_gate_row(edited, layer)
    edited_states = collect_cache(edited_model, cache.prompts, [layer], batch_size, reporter, "agreement")  # type: ignore[arg-type]
    return agreement_on_states(gate, row, edited_states.rows(layer), cache.rows(layer))
