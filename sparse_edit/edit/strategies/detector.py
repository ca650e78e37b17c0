"""``detector``: one neuron rewritten as a thresholded harmfulness detector.

The layer's quietest neuron (least output energy on harmless tokens) gets gate row ``k·w``, up
row ``w`` and down column ``scale × refusal direction``, where ``w`` is a ridge probe on the MLP
input; it adds the refusal direction only when the probe fires (see ``detector_math``).
``--detector-mode release`` swaps the probe's classes and lowers harmless prompts' projection.
``--detector-response step`` writes two neurons per probe whose push saturates past the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sparse_edit.architectures import NeuronSlice
from sparse_edit.edit.delta import SliceEdit
from sparse_edit.edit.strategies.base import (
    F64,
    FeatureNeeds,
    SolveJob,
    Strategy,
    TableRow,
    Tunable,
    refusal_direction,
)
from sparse_edit.edit.strategies.detector_math import (
    Activation,
    bias_direction,
    fit_detector,
    harmless_output_energy,
    output_scale,
    prompt_end_direction,
    require_firing,
    response,
    step_response,
)
from sparse_edit.errors import SparseEditError
from sparse_edit.gates.gate import Gate
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.options import DetectorMode, DetectorOptions, DetectorPushAt, DetectorResponse

if TYPE_CHECKING:
    from sparse_edit.edit.layer_data import LayerData


class DetectorStrategy(Strategy[DetectorOptions]):
    name = "detector"
    summary = (
        "the layer's quietest neuron (or one per low-resource language) rewritten as a thresholded probe that adds "
        "the refusal direction only when it fires (gate, up and down of the neuron; gated MLPs only)"
    )
    table_row = TableRow(
        keys="MLP input (last `--positions` tokens) of harmful prompts, low-resource and reference, scored +1; "
        "harmless last tokens and every harmless token scored −`--detector-margin` (a ridge probe `w`, closed "
        "form), or a gate fitted by `sparse-edit gates` (`--detector-gate`)",
        target="the same refusal-direction gap × `--gain`, fitted by one output scale",
        writes="the layer's quietest neuron (least output energy on harmless tokens; with `--detector-neurons "
        "per-language` one per low-resource language, with `--detector-response step` a pair) rewritten: "
        "`gate_proj` row = k·w, `up_proj` row = w (step: a bias direction, or with `--detector-push-at "
        "prompt-end` a direction that reads about 1 on the prompts' last tokens only), `down_proj` column = "
        "scale × refusal direction (gated MLPs only)",
    )
    gram_site = None  # rewritten neurons: no leak of a low-rank update to recompute
    settings_model = DetectorOptions
    search_space = (
        Tunable("gain", 0.25, 16.0, log=True),
        Tunable("detector_margin", 0.25, 4.0, log=True),
        Tunable("detector_sharpness", 2.0, 32.0, log=True),
        Tunable("detector_neurons", choices=("one", "per-language")),
        Tunable("detector_reference", choices=("fire", "quiet")),
    )

    def needs(self, settings: DetectorOptions) -> FeatureNeeds:
        return FeatureNeeds(
            sites=("mlp_input", "residual"),
            harmless_tail_rows=True,
            harmless_moments=("mlp_input", "neurons"),
            # release fits harmless prompts' refusal projections
            harmless_residual_rows=settings.detector_mode == "release",
        )

    def check(self, checkpoint: Checkpoint) -> None:
        detector_activation(checkpoint)

    def solve(self, job: SolveJob[DetectorOptions]) -> tuple[list[SliceEdit], dict[str, Any]]:
        own = job.settings  # its validators refused settings that cannot go together
        return detector_candidate(
            job.layer,
            job.checkpoint,
            job.data,
            DetectorSettings(
                own.gain,
                own.detector_margin,
                own.detector_sharpness,
                own.lam,
                own.detector_mode,
                own.detector_neurons == "per-language",
                own.detector_reference == "quiet",
                _gate_direction(own, job.layer),
                own.detector_response,
                own.detector_ramp,
                own.detector_push_at,
            ),
            job.share,
            job.avoid,
        )


@dataclass(frozen=True)
class DetectorSettings:
    gain: float
    margin: float
    sharpness: float
    lam: float
    mode: DetectorMode = "refuse"
    per_language: bool = False
    reference_quiet: bool = False  # the reference language's harmful rows are negatives, not positives
    gate: torch.Tensor | None = None  # [d] a fitted gate's direction (sparse-edit gates): no ridge probe
    response: DetectorResponse = "square"  # step: a neuron pair per probe whose push saturates (detector_math)
    ramp: float = 0.25  # step: the score at which the push reaches its full height
    push_at: DetectorPushAt = "every-token"  # step: prompt-end keeps the pair still off the prompts' last tokens


def _gate_direction(settings: DetectorOptions, layer: int) -> torch.Tensor | None:
    """The direction of the --detector-gate that reads ``layer`` (plan.check_gate made sure there is one)."""
    paths = settings.detector_gate
    if not paths:
        return None
    gate = next(gate for gate in map(Gate.load, paths) if gate.settings.layer == layer)
    return torch.from_numpy(gate.direction).to(F64)


def detector_activation(checkpoint: Checkpoint) -> Activation:
    """The gate activation the detector neuron will use; refuses models without a gated MLP."""
    if not checkpoint.family.gated:
        raise SparseEditError(
            f"--strategy detector needs a gated MLP (gate and up projections); {checkpoint.family.name} has one "
            "input projection: use --strategy output"
        )
    return checkpoint.gate_activation()


def probe_groups(data: LayerData, per_language: bool) -> list[torch.Tensor]:
    """Masks over the low-resource rows, one per probe: all rows, or one language's rows each."""
    count = data.low_rows["mlp_input"].shape[0]
    if not per_language:
        return [torch.ones(count, dtype=torch.bool)]
    langs = data.low_row_langs
    return [torch.tensor([lang == wanted for lang in langs]) for wanted in sorted(set(langs))]


def detector_candidate(
    layer: int,
    checkpoint: Checkpoint,
    data: LayerData,
    settings: DetectorSettings,
    share: float = 1.0,
    avoid: torch.Tensor | None = None,
) -> tuple[list[SliceEdit], dict[str, Any]]:
    """Rewrite the layer's quietest neuron(s) as detectors that move the refusal projection when they fire.

    refuse: fires on harmful prompts and raises their projection to the reference harmful level.
    release: fires on harmless prompts and lowers their projection to the reference harmless level.
    Per language: one probe per low-resource language (its harmful rows and the reference's against all
    harmless rows), output scales fitted jointly by non-negative least squares, so no neuron lowers refusal.
    ``avoid``: neurons other parts of a chain edit at this layer, never repurposed.
    """
    family, d_ff, mode = checkpoint.family, checkpoint.dims.mlp_width, settings.mode
    activation = detector_activation(checkpoint)
    harmless = data.harmless_rows.get("mlp_input", data.low_rows["mlp_input"][:0])
    quiet = settings.reference_quiet and mode == "refuse"
    probes = [settings.gate] if settings.gate is not None else ridge_probes(data, settings, harmless, quiet)
    detectors = torch.stack(probes)  # [n, d]
    step = settings.response == "step"
    bias = _up_direction(data, settings, harmless) if step else None
    per_probe = 2 if step else 1
    slices = {p: family.neuron_slice(layer, p, d_ff) for p in ("gate", "up", "down")}
    weights = {name: checkpoint.load_tensor(name) for name in {s.tensor for s in slices.values()}}
    energy = harmless_output_energy(
        data.harmless_squares["neurons"], slices["down"].read(weights[slices["down"].tensor], torch.arange(d_ff))
    )
    if avoid is not None and avoid.numel():
        energy = energy.clone()
        energy[avoid] = float("inf")  # another part of a chain edits them
    # The neurons harmless prompts would miss least.
    index = torch.argsort(energy, stable=True)[: per_probe * len(probes)]

    direction = refusal_direction(data)
    assert data.ref_harmless_residual is not None
    reference = data.ref_rows["residual"] if mode == "refuse" else data.ref_harmless_residual
    reference_level = float((reference.to(F64) @ direction).mean())

    def responses_and_shift(d: LayerData) -> tuple[torch.Tensor, torch.Tensor]:
        scores, shift = _wanted(d, mode, detectors, direction, reference_level, share * settings.gain)
        if bias is None:
            return response(scores, activation, settings.sharpness), shift
        biases = _keys(d, mode).to(F64) @ bias
        return step_response(scores, biases, activation, settings.sharpness, settings.ramp), shift

    responses, shift = responses_and_shift(data)
    scales = output_scales(responses, shift)
    new_rows = (
        _step_rows(detectors, bias, scales, direction, settings)
        if bias is not None
        else {
            "gate": settings.sharpness * detectors,
            "up": detectors,
            "down": scales[:, None] * direction[None, :],
        }
    )
    edits = [
        _rewrite(layer, projection, neuron_slice, weights[neuron_slice.tensor], index, new_rows[projection])
        for projection, neuron_slice in slices.items()
    ]
    diagnostics = _detector_diagnostics(
        data, detectors, probes_positive_count(data, harmless, mode, quiet), harmless
    )
    diagnostics["fires_reference_harmful_train"] = float(
        (reference.to(F64) @ detectors.T > 0).any(dim=1).double().mean()
    )
    fitted = responses @ scales
    diagnostics.update(
        {
            "fit_train": float((fitted - shift).norm() / shift.norm()) if float(shift.norm()) > 0 else 0.0,
            "detector_mode": mode,
            "detector_scale": float(scales[0]) if len(probes) == 1 else [float(x) for x in scales],
            "detector_response": settings.response,
            "repurposed_neuron": int(index[0]) if len(index) == 1 else [int(i) for i in index],
            "repurposed_energy_share": float(energy[index].sum() / energy.sum())
            if float(energy.sum()) > 0
            else 0.0,
            "refusal_level": reference_level,
        }
    )
    if bias is not None:  # how near-constant the up read-out is on the harmless last tokens
        diagnostics["bias_spread"] = float((harmless.to(F64) @ bias).std()) if harmless.shape[0] > 1 else 0.0
        diagnostics["detector_push_at"] = settings.push_at
        # its root mean square over every harmless token: about 1 for a bias direction, near 0 for prompt-end
        gram, tokens = data.harmless_gram["mlp_input"].to(F64), data.harmless_tokens
        diagnostics["up_rms_harmless_tokens"] = float((bias @ gram @ bias / max(tokens, 1)).clamp(min=0).sqrt())
    if data.dev is not None and data.dev.low_rows["mlp_input"].shape[0]:
        dev_responses, dev_shift = responses_and_shift(
            data.dev
        )  # release: gather kept the dev harmless residual rows
        if float(dev_shift.norm()) > 0:
            diagnostics["fit_dev"] = float((dev_responses @ scales - dev_shift).norm() / dev_shift.norm())
    return edits, diagnostics


def _up_direction(data: LayerData, settings: DetectorSettings, harmless: torch.Tensor) -> torch.Tensor:
    """The step pair's up row: a bias direction (every token) or a prompt-end direction fitted on the last-token
    rows of every anchor group against the harmless tokens."""
    gram, tokens = data.harmless_gram["mlp_input"], data.harmless_tokens
    if settings.push_at == "every-token":
        return bias_direction(gram, data.harmless_sums["mlp_input"], tokens)
    ends = torch.cat([data.low_rows["mlp_input"], data.ref_rows["mlp_input"], harmless])
    return prompt_end_direction(ends, gram, tokens)


def ridge_probes(
    data: LayerData, settings: DetectorSettings, harmless: torch.Tensor, quiet: bool
) -> list[torch.Tensor]:
    """The ridge probe of each probe group (``probe_groups``), fitted in closed form (``fit_detector``)."""
    sums, gram = data.harmless_sums["mlp_input"], data.harmless_gram["mlp_input"]
    reference = data.ref_rows["mlp_input"]
    probes = []
    for mask in probe_groups(data, settings.per_language):
        low = data.low_rows["mlp_input"][mask]
        harmful = low if quiet else torch.cat([low, reference])
        positive, negative = (harmful, harmless) if settings.mode == "refuse" else (harmless, harmful)
        if quiet:
            negative = torch.cat([negative, reference])
        probes.append(
            fit_detector(positive, negative, gram, sums, data.harmless_tokens, settings.margin, settings.lam)
        )
    return probes


def _step_rows(
    detectors: torch.Tensor,
    bias: torch.Tensor,
    scales: torch.Tensor,
    direction: torch.Tensor,
    settings: DetectorSettings,
) -> dict[str, torch.Tensor]:
    """Rows of the step pairs, neuron 2i and 2i+1 for probe i: gates ``κ w`` and ``κ (w − δ u)``, up ``u``,
    output columns ``±τ_i r``."""
    kappa = settings.sharpness / settings.ramp
    gates = torch.stack([kappa * detectors, kappa * (detectors - settings.ramp * bias[None, :])], dim=1)
    downs = torch.stack([scales[:, None] * direction[None, :], -scales[:, None] * direction[None, :]], dim=1)
    count = 2 * detectors.shape[0]
    return {
        "gate": gates.reshape(count, -1),
        "up": bias[None, :].expand(count, -1),
        "down": downs.reshape(count, -1),
    }


def output_scales(responses: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The output scale of each detector neuron [n]: least squares for one neuron (its sign free, as release
    needs), non-negative least squares for several (a neuron that fires may only add refusal)."""
    if responses.shape[1] == 1:
        return torch.tensor([output_scale(responses[:, 0], shift)], dtype=F64)
    require_firing(responses)
    from scipy.optimize import nnls

    solution, _ = nnls(responses.numpy(), shift.to(F64).numpy())
    return torch.from_numpy(solution).to(F64)


def probes_positive_count(data: LayerData, harmless: torch.Tensor, mode: DetectorMode, quiet: bool = False) -> int:
    """Rows the probes are fitted to fire on (for the manifest); ``quiet``: not the reference language's."""
    if mode == "refuse":
        reference = 0 if quiet else data.ref_rows["mlp_input"].shape[0]
        return int(data.low_rows["mlp_input"].shape[0] + reference)
    return int(harmless.shape[0])


def _keys(d: LayerData, mode: DetectorMode) -> torch.Tensor:
    """The MLP-input rows the neurons should fire on: low-resource harmful (refuse) or harmless (release)."""
    return d.low_rows["mlp_input"] if mode == "refuse" else d.harmless_rows["mlp_input"]


def _wanted(
    d: LayerData, mode: DetectorMode, detectors: torch.Tensor, direction: torch.Tensor, level: float, gain: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probe scores [rows, n] and wanted shifts [rows] of the rows the neurons should fire on (release: ≤ 0)."""
    keys = _keys(d, mode)
    residual = d.low_rows["residual"] if mode == "refuse" else d.harmless_rows["residual"]
    gap = level - residual.to(F64) @ direction
    gap = gap.clamp(min=0) if mode == "refuse" else gap.clamp(max=0)
    return keys.to(F64) @ detectors.T, gain * gap


def _rewrite(
    layer: int,
    projection: str,
    neuron_slice: NeuronSlice,
    weight: torch.Tensor,
    index: torch.Tensor,
    new_rows: torch.Tensor,
) -> SliceEdit:
    """The edit that replaces the neurons' rows of ``projection`` with ``new_rows`` [n, d]."""
    old = neuron_slice.read(weight, index).to(F64)  # [n, d]
    return SliceEdit(
        layer=layer,
        projection=projection,
        slice=neuron_slice,
        neurons=index,
        a=torch.eye(len(index)),
        b=(new_rows - old).float().contiguous(),
        key_axis="rows" if projection == "down" else "columns",
    )


def _detector_diagnostics(
    data: LayerData, detectors: torch.Tensor, positives: int, harmless: torch.Tensor
) -> dict[str, Any]:
    """How often the probes fire (any of them) on each anchor group."""

    def fires(rows: torch.Tensor) -> float:
        return float((rows.to(F64) @ detectors.T > 0).any(dim=1).double().mean())

    diagnostics: dict[str, Any] = {
        "rank": int(detectors.shape[0]),
        "jitter": 0.0,
        "nullspace_dim": None,
        "anchors_train": positives,
        "fires_harmful_train": fires(data.low_rows["mlp_input"]),
    }
    if harmless.shape[0]:
        diagnostics["fires_harmless_tail_train"] = fires(harmless)
    dev = data.dev
    if dev is not None and dev.low_rows["mlp_input"].shape[0]:
        diagnostics["fires_harmful_dev"] = fires(dev.low_rows["mlp_input"])
        dev_tail = dev.harmless_rows.get("mlp_input")
        if dev_tail is not None and dev_tail.shape[0]:
            diagnostics["fires_harmless_tail_dev"] = fires(dev_tail)
    return diagnostics


STRATEGY = DetectorStrategy()
