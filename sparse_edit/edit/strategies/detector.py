"""``detector``: one neuron rewritten as a thresholded harmfulness detector.

The layer's quietest neuron (least output energy on harmless tokens) gets gate row ``k·w``, up
row ``w`` and down column ``scale × refusal direction``, where ``w`` is a ridge probe on the MLP
input; it adds the refusal direction only when the probe fires (see ``detector_math``).
``--detector-mode release`` swaps the probe's classes and lowers harmless prompts' projection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from sparse_edit.architectures import NeuronSlice
from sparse_edit.config import ApplyOptions, DetectorMode
from sparse_edit.edit.delta import SliceEdit
from sparse_edit.edit.strategies.base import (
    F64,
    FeatureNeeds,
    SolveJob,
    Strategy,
    Tunable,
    refusal_direction,
)
from sparse_edit.edit.strategies.detector_math import (
    Activation,
    fit_detector,
    harmless_output_energy,
    output_scale,
    response,
)
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint

if TYPE_CHECKING:
    from sparse_edit.edit.gather import LayerData


class DetectorStrategy(Strategy):
    name = "detector"
    summary = (
        "the layer's quietest neuron rewritten as a thresholded probe that adds the refusal direction only "
        "when it fires (gate, up and down of one neuron; gated MLPs only)"
    )
    gram_site = None  # one rewritten neuron: no leak of a low-rank update to recompute
    settings = ("gain", "detector_margin", "detector_mode", "detector_sharpness")
    search_space = (
        Tunable("gain", 0.25, 16.0, log=True),
        Tunable("detector_margin", 0.25, 4.0, log=True),
        Tunable("detector_sharpness", 2.0, 32.0, log=True),
    )

    def needs(self, options: ApplyOptions) -> FeatureNeeds:
        return FeatureNeeds(
            sites=("mlp_input", "residual"),
            harmless_tail_rows=True,
            harmless_moments=("mlp_input", "neurons"),
            # release fits harmless prompts' refusal projections
            harmless_residual_rows=options.detector_mode == "release",
        )

    def check(self, checkpoint: Checkpoint) -> None:
        detector_activation(checkpoint)

    def solve(self, job: SolveJob) -> tuple[list[SliceEdit], dict[str, Any]]:
        options = job.options
        return detector_candidate(
            job.layer,
            job.checkpoint,
            job.data,
            options.gain,
            options.detector_margin,
            options.detector_sharpness,
            options.lam,
            job.share,
            options.detector_mode,
        )


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
    sums, gram = data.safe_sums["mlp_input"], data.safe_gram["mlp_input"]
    detector = fit_detector(positive, negative, gram, sums, data.safe_tokens, margin, lam)
    slices = {p: family.neuron_slice(layer, p, d_ff) for p in ("gate", "up", "down")}
    weights = {name: checkpoint.load_tensor(name) for name in {s.tensor for s in slices.values()}}
    energy = harmless_output_energy(
        data.safe_squares["neurons"], slices["down"].read(weights[slices["down"].tensor], torch.arange(d_ff))
    )
    neuron = int(torch.argmin(energy))  # the neuron harmless prompts miss least
    index = torch.tensor([neuron])

    direction = refusal_direction(data)
    assert data.ref_harmless_residual is not None
    reference = data.ref_rows["residual"] if mode == "refuse" else data.ref_harmless_residual
    reference_level = float((reference.to(F64) @ direction).mean())

    def wanted(d: LayerData) -> tuple[torch.Tensor, torch.Tensor]:
        return _wanted(d, mode, detector, direction, reference_level, share * gain)

    scores, shift = wanted(data)
    responses = response(scores, activation, sharpness)
    scale = output_scale(responses, shift)
    new_rows = {"gate": sharpness * detector, "up": detector, "down": scale * direction}
    edits = [
        _rewrite(layer, projection, neuron_slice, weights[neuron_slice.tensor], index, new_rows[projection])
        for projection, neuron_slice in slices.items()
    ]
    diagnostics = _detector_diagnostics(data, detector, positive, harmless, scale, responses, shift)
    diagnostics.update(
        {
            "detector_mode": mode,
            "repurposed_neuron": neuron,
            "repurposed_energy_share": float(energy[neuron] / energy.sum()) if float(energy.sum()) > 0 else 0.0,
            "refusal_level": reference_level,
        }
    )
    if data.dev is not None and data.dev.low_rows["mlp_input"].shape[0]:
        dev_scores, dev_shift = wanted(data.dev)  # release: gather kept the dev harmless residual rows too
        if float(dev_shift.norm()) > 0:
            dev_response = scale * response(dev_scores, activation, sharpness)
            diagnostics["fit_dev"] = float((dev_response - dev_shift).norm() / dev_shift.norm())
    return edits, diagnostics


def _wanted(
    d: LayerData, mode: DetectorMode, detector: torch.Tensor, direction: torch.Tensor, level: float, gain: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe scores and wanted shifts of the rows the neuron should fire on (release: lower, so ≤ 0)."""
    if mode == "refuse":
        keys, residual = d.low_rows["mlp_input"], d.low_rows["residual"]
    else:
        keys, residual = d.safe_rows["mlp_input"], d.safe_rows["residual"]
    gap = level - residual.to(F64) @ direction
    gap = gap.clamp(min=0) if mode == "refuse" else gap.clamp(max=0)
    return keys.to(F64) @ detector, gain * gap


def _rewrite(
    layer: int,
    projection: str,
    neuron_slice: NeuronSlice,
    weight: torch.Tensor,
    index: torch.Tensor,
    new_row: torch.Tensor,
) -> SliceEdit:
    """The rank-1 edit that replaces the neuron's row of ``projection`` with ``new_row``."""
    old = neuron_slice.read(weight, index).to(F64)  # [1, d]
    return SliceEdit(
        layer=layer,
        projection=projection,
        slice=neuron_slice,
        neurons=index,
        a=torch.ones(1, 1),
        b=(new_row[None, :] - old).float().contiguous(),
        key_axis="rows" if projection == "down" else "columns",
    )


def _detector_diagnostics(
    data: LayerData,
    detector: torch.Tensor,
    positive: torch.Tensor,
    harmless: torch.Tensor,
    scale: float,
    responses: torch.Tensor,
    shift: torch.Tensor,
) -> dict[str, Any]:
    """How well the neuron's response fits the wanted shift, and how often its probe fires."""

    def fires(rows: torch.Tensor) -> float:
        return float((rows.to(F64) @ detector > 0).double().mean())

    diagnostics: dict[str, Any] = {
        "rank": 1,
        "jitter": 0.0,
        "nullspace_dim": None,
        "anchors_train": int(positive.shape[0]),
        "fit_train": float((scale * responses - shift).norm() / shift.norm()) if float(shift.norm()) > 0 else 0.0,
        "detector_scale": scale,
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
    return diagnostics


STRATEGY = DetectorStrategy()
