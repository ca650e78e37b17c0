"""``output``: an output-side edit in the residual stream.

Keys are the activations of a neuron set (the union of the low-resource languages' safety
neurons, capped by ``--max-edit-neurons``); the target raises each prompt's projection on the
layer's refusal direction (reference harmful − harmless mean of the layer output) to the
reference harmful level, times ``--gain``; the update goes into those neurons' ``down_proj``
columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from sparse_edit.edit.delta import SliceEdit
from sparse_edit.edit.solver import EditProblem, SolveSettings, fit_ratio, leak_ratio, solve
from sparse_edit.edit.strategies.base import (
    F64,
    FeatureNeeds,
    SolveJob,
    Strategy,
    TableRow,
    Tunable,
    refusal_direction,
    shift_ratio,
    solve_diagnostics,
)
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.neurons.artifact import LocateArtifact
from sparse_edit.options import NeuronChoice, OutputOptions

if TYPE_CHECKING:
    from sparse_edit.edit.layer_data import LayerData


class OutputStrategy(Strategy[OutputOptions]):
    name = "output"
    summary = (
        "down_proj columns of a neuron set, fitted to raise the layer's refusal-direction projection of "
        "low-resource harmful prompts to the reference level (× gain), harmless tail rows held still"
    )
    table_row = TableRow(
        keys="activations of a neuron set (union of the low-resource languages' safety neurons, capped by "
        "`--max-edit-neurons`)",
        target="raise the prompt's projection on the layer's refusal direction (reference harmful − harmless mean "
        "of the layer output) to the reference harmful level, × `--gain`",
        writes="`down_proj` columns of that set (GPT-2: `c_proj` rows)",
    )
    gram_site = "neurons"
    settings_model = OutputOptions
    search_space = (
        Tunable("gain", 1.0, 32.0, log=True),
        Tunable("max_edit_neurons", choices=(128, 512)),
        Tunable("output_gamma", 10.0, 1000.0, log=True),
        Tunable("harmless_tail_weight", 0.0, 4.0),
        Tunable("reference_weight", 0.0, 2.0),
    )

    def needs(self, settings: OutputOptions) -> FeatureNeeds:
        return FeatureNeeds(sites=("neurons", "residual"), neuron_subset=True, harmless_tail_rows=True)

    def neurons(
        self, artifact: LocateArtifact, layer: int, settings: OutputOptions, reference: str, low_langs: list[str]
    ) -> torch.Tensor:
        return edit_neurons(
            artifact, layer, settings.output_neurons, reference, low_langs, settings.max_edit_neurons
        )

    def solve(self, job: SolveJob[OutputOptions]) -> tuple[list[SliceEdit], dict[str, Any]]:
        assert job.neurons is not None
        own = job.settings
        settings = SolveSettings(own.output_gamma, own.lam, own.rank, own.nullspace, own.nullspace_threshold)
        return output_candidate(
            job.layer,
            job.neurons,
            job.checkpoint,
            job.data,
            settings,
            own.gain,
            job.share,
            own.harmless_tail_weight,
            own.reference_weight,
        )


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


def with_unshifted(p: EditProblem, rows: torch.Tensor | None, weight: float, harmful: int) -> EditProblem:
    """``p`` plus ``rows`` fitted to no shift; weight 1 gives them the ``harmful`` rows' total weight."""
    if weight <= 0 or rows is None or not rows.shape[0]:
        return p
    scale = (weight * harmful / rows.shape[0]) ** 0.5
    keys = torch.cat([p.keys, scale * rows.to(F64)])
    targets = torch.cat([p.targets, p.targets.new_zeros(rows.shape[0], p.targets.shape[1])])
    return EditProblem(keys, targets, p.preserve_gram, p.preserve_count)


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
        return EditProblem(
            keys, shift[:, None] * direction[None, :], data.harmless_gram["neurons"], data.harmless_tokens
        )

    train = problem(data)
    harmful = train.keys.shape[0]
    fitted = with_unshifted(train, data.harmless_rows.get("neurons"), tail_weight, harmful)
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
    diagnostics = solve_diagnostics(
        solution.rank, solution.jitter, solution.nullspace_dim, train, delta, w_s, data, "neurons"
    )
    diagnostics["refusal_level"] = level
    if data.dev is not None and data.dev.low_rows["neurons"].shape[0]:
        dev = problem(data.dev)
        diagnostics["fit_dev"] = fit_ratio(dev.keys, dev.targets, delta)
        diagnostics["leak_dev"] = leak_ratio(data.dev.harmless_gram["neurons"], delta, w_s)
        tail_ratio = shift_ratio(data.dev.harmless_rows.get("neurons"), dev, delta, direction)
        if tail_ratio is not None:
            diagnostics["harmless_tail_ratio_dev"] = tail_ratio
    for name, rows in (
        ("harmless_tail", data.harmless_rows.get("neurons")),
        ("reference", data.ref_rows.get("neurons")),
    ):
        ratio = shift_ratio(rows, train, delta, direction)
        if ratio is not None:
            diagnostics[f"{name}_ratio_train"] = ratio
    return [edit], diagnostics


STRATEGY = OutputStrategy()
