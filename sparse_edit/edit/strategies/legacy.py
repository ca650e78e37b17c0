"""Edit strategies: which weights an edit touches and what it fits, all through one solver.

* ``paper``: the published edit. Keys are MLP inputs of low-resource harmful prompts, the
  target is the reference-language pre-activation of the safety neurons,
  ``(X_ref − X_low) W_S``; the update goes into those neurons' input rows (gate, and
  optionally up).
* ``output``: an output-side edit in the residual stream. Keys are the activations of a
  neuron set, the target raises the prompt's projection on the layer's refusal direction
  (reference harmful mean − reference harmless mean of the layer output) to the reference
  harmful level, times a gain; the update goes into those neurons' ``down_proj`` columns.
* ``detector``: one neuron of the layer (the quietest on harmless tokens) is rewritten as a
  thresholded harmfulness detector on the MLP input that adds the refusal direction only when
  it fires (see ``sparse_edit.edit.strategies.detector_math``); gate row, up row and down column change.

All use the harmless token Gram of their own keys as the null-space term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparse_edit.architectures import Projection
from sparse_edit.config import DetectorMode, NeuronChoice
from sparse_edit.edit.delta import SliceEdit
from sparse_edit.edit.solver import EditProblem, SolveSettings, fit_ratio, leak_ratio, solve
from sparse_edit.edit.strategies.detector_math import (
    Activation,
    fit_detector,
    harmless_output_energy,
    output_scale,
    response,
)
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.locate.artifact import LocateArtifact
from sparse_edit.model.batching import Encoded

F64 = torch.float64


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


def edit_neurons(
    artifact: LocateArtifact,
    layer: int,
    choice: NeuronChoice,
    reference: str,
    low_langs: Sequence[str],
    cap: int | None,
) -> torch.Tensor:
    """The neuron set an edit touches at ``layer``; capped by the low languages' mean Cohen's d.

    ``low-only`` is the low languages' union without the reference language's set: neurons whose
    firing the reference language's (working) refusal does not rely on.
    """
    if choice == "reference":
        index = artifact.neuron_set(reference, layer)
    elif choice == "all":
        index = torch.arange(artifact.mlp_width)
    else:
        sets = [artifact.neuron_set(lang, layer) for lang in low_langs]
        index = torch.unique(torch.cat(sets)) if sets else torch.empty(0, dtype=torch.int64)
        if choice == "low-only":
            index = index[~torch.isin(index, artifact.neuron_set(reference, layer))]
    if cap is not None and index.numel() > cap:
        strength = torch.stack([artifact.scores[lang].d[layer, index] for lang in low_langs]).mean(0)
        index = index[torch.argsort(strength, descending=True, stable=True)[:cap]]
    return torch.sort(index).values.to(torch.int64)


def pair_rows(
    low: Sequence[Encoded], ref: Sequence[Encoded], positions: int, kind: str
) -> tuple[list[int], list[int]]:
    """Row indices (prompt-major, ``positions`` rows per prompt) pairing each low row with its target row.

    ``parallel`` pairs a prompt with the reference prompt of the same id, position by position;
    ``class-mean`` returns an empty reference list (the caller uses the reference mean).
    """
    low_rows = list(range(len(low) * positions))
    if kind == "class-mean":
        return low_rows, []
    ref_index = {item.prompt.id: i for i, item in enumerate(ref)}
    keep, targets = [], []
    for i, item in enumerate(low):
        j = ref_index.get(item.prompt.id)
        if j is None:
            continue
        keep += [i * positions + p for p in range(positions)]
        targets += [j * positions + p for p in range(positions)]
    return keep, targets


@dataclass
class LayerData:
    """Everything a strategy needs at one layer (rows are prompt-major, float32)."""

    low_rows: dict[str, torch.Tensor]  # site -> [N_low * k, D]
    ref_rows: dict[str, torch.Tensor]  # site -> [N_ref * k, D]
    pairs: tuple[list[int], list[int]]
    safe_gram: dict[str, torch.Tensor]  # site -> [D, D] float64
    safe_tokens: int
    ref_harmless_residual: torch.Tensor | None  # [M * k, d] for the refusal direction
    dev: LayerData | None = None
    safe_rows: dict[str, torch.Tensor] = field(default_factory=dict)  # site -> [N_safe * k, D]
    safe_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # site -> [D_full] float64, over tokens
    safe_squares: dict[str, torch.Tensor] = field(default_factory=dict)  # site -> [D_full] float64, over tokens


def _target_points(data: LayerData, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    low_idx, ref_idx = data.pairs
    keys = data.low_rows[site][low_idx].to(F64)
    if ref_idx:
        return keys, data.ref_rows[site][ref_idx].to(F64)
    return keys, data.ref_rows[site].to(F64).mean(0, keepdim=True).expand_as(keys)


def paper_candidate(
    layer: int,
    neurons: torch.Tensor,
    checkpoint: Checkpoint,
    projections: Sequence[Projection],
    data: LayerData,
    settings: SolveSettings,
    share: float = 1.0,
) -> tuple[list[SliceEdit], dict[str, Any]]:
    family, d_ff = checkpoint.family, checkpoint.dims.mlp_width
    slices = []
    for projection in projections:
        neuron_slice = family.neuron_slice(layer, projection, d_ff)
        weight = checkpoint.load_tensor(neuron_slice.tensor)
        slices.append((projection, neuron_slice, neuron_slice.read(weight, neurons).T.to(F64)))
    w_s = torch.cat([w for _, _, w in slices], dim=1)  # [d, m * len(projections)]

    def problem(d: LayerData) -> EditProblem:
        keys, targets = _target_points(d, "mlp_input")
        return EditProblem(keys, share * (targets - keys) @ w_s, data.safe_gram["mlp_input"], data.safe_tokens)

    train = problem(data)
    solution = solve(train, settings)
    m = int(neurons.numel())
    edits = [
        SliceEdit(
            layer=layer,
            projection=projection,
            slice=neuron_slice,
            neurons=neurons,
            a=solution.right[:, k * m : (k + 1) * m].T.float().contiguous(),
            b=solution.left.T.float().contiguous(),
            key_axis="columns",
        )
        for k, (projection, neuron_slice, _) in enumerate(slices)
    ]
    delta = solution.delta
    diagnostics = _diagnostics(
        solution.rank, solution.jitter, solution.nullspace_dim, train, delta, w_s, data, "mlp_input"
    )
    if data.dev is not None and data.dev.low_rows["mlp_input"].shape[0]:
        dev = problem(data.dev)
        diagnostics["fit_dev"] = fit_ratio(dev.keys, dev.targets, delta)
        diagnostics["leak_dev"] = leak_ratio(data.dev.safe_gram["mlp_input"], delta, w_s)
    return edits, diagnostics


def refusal_direction(data: LayerData) -> torch.Tensor:
    assert data.ref_harmless_residual is not None
    direction = data.ref_rows["residual"].to(F64).mean(0) - data.ref_harmless_residual.to(F64).mean(0)
    return direction / direction.norm().clamp(min=1e-12)


def output_candidate(
    layer: int,
    neurons: torch.Tensor,
    checkpoint: Checkpoint,
    data: LayerData,
    settings: SolveSettings,
    gain: float,
    share: float = 1.0,
    tail_weight: float = 0.0,
    reference_weight: float = 0.0,
) -> tuple[list[SliceEdit], dict[str, Any]]:
    """``tail_weight`` > 0 also fits the harmless prompts' last-token rows to a zero shift (weighted):
    the chat-template tail looks alike for every prompt, so without those rows the edit pushes
    harmless prompts toward refusal about as much as harmful ones. ``reference_weight`` > 0 does the
    same with the reference language's harmful rows: that language already refuses, so the edit
    should leave its prompts, harmful or not, where they are."""
    family, d_ff = checkpoint.family, checkpoint.dims.mlp_width
    neuron_slice = family.neuron_slice(layer, "down", d_ff)
    w_s = neuron_slice.read(checkpoint.load_tensor(neuron_slice.tensor), neurons).to(F64)  # [m, d]
    direction = refusal_direction(data)
    level = float((data.ref_rows["residual"].to(F64) @ direction).mean())

    def problem(d: LayerData) -> EditProblem:
        low_idx, _ = d.pairs
        keys = d.low_rows["neurons"][low_idx].to(F64)
        projection = d.low_rows["residual"][low_idx].to(F64) @ direction
        shift = (share * gain * (level - projection)).clamp(min=0)
        return EditProblem(keys, shift[:, None] * direction[None, :], data.safe_gram["neurons"], data.safe_tokens)

    def with_unshifted(p: EditProblem, rows: torch.Tensor | None, weight: float, harmful: int) -> EditProblem:
        """``p`` plus ``rows`` fitted to no shift; weight 1 gives them the ``harmful`` rows' total weight."""
        if weight <= 0 or rows is None or not rows.shape[0]:
            return p
        scale = (weight * harmful / rows.shape[0]) ** 0.5
        keys = torch.cat([p.keys, scale * rows.to(F64)])
        targets = torch.cat([p.targets, p.targets.new_zeros(rows.shape[0], p.targets.shape[1])])
        return EditProblem(keys, targets, p.preserve_gram, p.preserve_count)

    train = problem(data)
    harmful = train.keys.shape[0]
    fitted = with_unshifted(train, data.safe_rows.get("neurons"), tail_weight, harmful)
    solution = solve(with_unshifted(fitted, data.ref_rows.get("neurons"), reference_weight, harmful), settings)
    edit = SliceEdit(
        layer=layer,
        projection="down",
        slice=neuron_slice,
        neurons=neurons,
        a=solution.left.float().contiguous(),
        b=solution.right.float().contiguous(),
        key_axis="rows",
    )
    delta = solution.delta
    diagnostics = _diagnostics(
        solution.rank, solution.jitter, solution.nullspace_dim, train, delta, w_s, data, "neurons"
    )
    diagnostics["refusal_level"] = level
    if data.dev is not None and data.dev.low_rows["neurons"].shape[0]:
        dev = problem(data.dev)
        diagnostics["fit_dev"] = fit_ratio(dev.keys, dev.targets, delta)
        diagnostics["leak_dev"] = leak_ratio(data.dev.safe_gram["neurons"], delta, w_s)
        tail_ratio = _shift_ratio(data.dev.safe_rows.get("neurons"), dev, delta, direction)
        if tail_ratio is not None:
            diagnostics["harmless_tail_ratio_dev"] = tail_ratio
    for name, rows in (
        ("harmless_tail", data.safe_rows.get("neurons")),
        ("reference", data.ref_rows.get("neurons")),
    ):
        ratio = _shift_ratio(rows, train, delta, direction)
        if ratio is not None:
            diagnostics[f"{name}_ratio_train"] = ratio
    return [edit], diagnostics


def detector_activation(checkpoint: Checkpoint) -> Activation:
    """The gate activation the detector neuron will use; refuses models without a gated MLP."""
    if not checkpoint.family.gated:
        raise SparseEditError(
            f"--strategy detector needs a gated MLP (gate and up projections); {checkpoint.family.name} has one "
            "input projection: use --strategy output"
        )
    return checkpoint.gate_activation()


def detector_candidate(
    layer: int,
    checkpoint: Checkpoint,
    data: LayerData,
    gain: float,
    margin: float,
    sharpness: float,
    lam: float,
    share: float = 1.0,
    mode: DetectorMode = "refuse",
) -> tuple[list[SliceEdit], dict[str, Any]]:
    """Rewrite the layer's quietest neuron as a detector that moves the refusal projection when it fires.

    refuse: fires on harmful prompts and raises their projection to the reference harmful level.
    release: fires on harmless prompts and lowers their projection to the reference harmless level.
    """
    family, d_ff = checkpoint.family, checkpoint.dims.mlp_width
    activation = detector_activation(checkpoint)
    harmful = torch.cat([data.low_rows["mlp_input"], data.ref_rows["mlp_input"]])
    harmless = data.safe_rows.get("mlp_input", harmful[:0])
    positive, negative = (harmful, harmless) if mode == "refuse" else (harmless, harmful)
    detector = fit_detector(
        positive,
        negative,
        data.safe_gram["mlp_input"],
        data.safe_sums["mlp_input"],
        data.safe_tokens,
        margin,
        lam,
    )
    slices = {p: family.neuron_slice(layer, p, d_ff) for p in ("gate", "up", "down")}
    weights = {name: checkpoint.load_tensor(name) for name in {s.tensor for s in slices.values()}}
    down_rows = slices["down"].read(weights[slices["down"].tensor], torch.arange(d_ff))
    energy = harmless_output_energy(data.safe_squares["neurons"], down_rows)
    neuron = int(torch.argmin(energy))  # the neuron harmless prompts miss least
    index = torch.tensor([neuron])

    direction = refusal_direction(data)
    assert data.ref_harmless_residual is not None
    reference = data.ref_rows["residual"] if mode == "refuse" else data.ref_harmless_residual
    reference_level = float((reference.to(F64) @ direction).mean())

    def wanted(d: LayerData) -> tuple[torch.Tensor, torch.Tensor]:
        """Probe scores and wanted shifts of the rows the neuron should fire on (release: lower, so ≤ 0)."""
        if mode == "refuse":
            keys, residual = d.low_rows["mlp_input"], d.low_rows["residual"]
        else:
            keys, residual = d.safe_rows["mlp_input"], d.safe_rows["residual"]
        gap = reference_level - residual.to(F64) @ direction
        gap = gap.clamp(min=0) if mode == "refuse" else gap.clamp(max=0)
        return keys.to(F64) @ detector, share * gain * gap

    scores, shift = wanted(data)
    responses = response(scores, activation, sharpness)
    scale = output_scale(responses, shift)
    new_rows = {"gate": sharpness * detector, "up": detector, "down": scale * direction}
    edits = []
    for projection, neuron_slice in slices.items():
        old = neuron_slice.read(weights[neuron_slice.tensor], index).to(F64)  # [1, d]
        edits.append(
            SliceEdit(
                layer=layer,
                projection=projection,
                slice=neuron_slice,
                neurons=index,
                a=torch.ones(1, 1),
                b=(new_rows[projection][None, :] - old).float().contiguous(),
                key_axis="rows" if projection == "down" else "columns",
            )
        )

    def fires(rows: torch.Tensor) -> float:
        return float((rows.to(F64) @ detector > 0).double().mean())

    diagnostics: dict[str, Any] = {
        "rank": 1,
        "jitter": 0.0,
        "nullspace_dim": None,
        "anchors_train": int(positive.shape[0]),
        "fit_train": float((scale * responses - shift).norm() / shift.norm()) if float(shift.norm()) > 0 else 0.0,
        "detector_mode": mode,
        "repurposed_neuron": neuron,
        "repurposed_energy_share": float(energy[neuron] / energy.sum()) if float(energy.sum()) > 0 else 0.0,
        "detector_scale": scale,
        "refusal_level": reference_level,
        "fires_harmful_train": fires(data.low_rows["mlp_input"]),
    }
    if harmless.shape[0]:
        diagnostics["fires_harmless_tail_train"] = fires(harmless)
    dev = data.dev
    if dev is not None and dev.low_rows["mlp_input"].shape[0]:
        diagnostics["fires_harmful_dev"] = fires(dev.low_rows["mlp_input"])
        dev_tail = dev.safe_rows.get("mlp_input")
        if dev_tail is not None and dev_tail.shape[0]:
            diagnostics["fires_harmless_tail_dev"] = fires(dev_tail)
        dev_scores, dev_shift = wanted(dev)  # release: gather kept the dev harmless residual rows too
        if float(dev_shift.norm()) > 0:
            dev_response = scale * response(dev_scores, activation, sharpness)
            diagnostics["fit_dev"] = float((dev_response - dev_shift).norm() / dev_shift.norm())
    return edits, diagnostics


def _shift_ratio(
    rows: torch.Tensor | None, harmful: EditProblem, delta: torch.Tensor, direction: torch.Tensor
) -> float | None:
    """Mean shift the edit puts on ``rows`` (keys) along the refusal direction, relative to the mean
    shift harmful rows are asked for (0 = untouched; 1 = pushed as far as harmful prompts should go)."""
    wanted = float((harmful.targets @ direction).mean()) if harmful.targets.shape[0] else 0.0
    if rows is None or not rows.shape[0] or wanted <= 0:
        return None
    return float((rows.to(F64) @ delta @ direction).mean()) / wanted


def _diagnostics(
    rank: int,
    jitter: float,
    nullspace_dim: int | None,
    train: EditProblem,
    delta: torch.Tensor,
    w_s: torch.Tensor,
    data: LayerData,
    site: str,
) -> dict[str, Any]:
    return {
        "rank": rank,
        "jitter": jitter,
        "nullspace_dim": nullspace_dim,
        "anchors_train": int(train.keys.shape[0]),
        "fit_train": fit_ratio(train.keys, train.targets, delta),
        "leak_train": leak_ratio(data.safe_gram[site], delta, w_s),
        "relative_norm": float(delta.norm() / w_s.norm()) if float(w_s.norm()) > 0 else 0.0,
    }
