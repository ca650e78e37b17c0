"""``paper``: the published edit.

Keys are the MLP inputs of low-resource harmful prompts, the target is the reference-language
pre-activation of the safety neurons, ``(X_ref − X_low) W_S``; the update goes into those
neurons' input rows (gate, and with ``--proj gate,up`` also up).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from sparse_edit.architectures import Projection
from sparse_edit.edit.delta import SliceEdit
from sparse_edit.edit.solver import EditProblem, SolveSettings, fit_ratio, leak_ratio, solve
from sparse_edit.edit.strategies.base import (
    F64,
    FeatureNeeds,
    SolveJob,
    Strategy,
    TableRow,
    Tunable,
    solve_diagnostics,
    target_points,
)
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.neurons.artifact import LocateArtifact
from sparse_edit.options import PaperOptions

if TYPE_CHECKING:
    from sparse_edit.edit.layer_data import LayerData


class PaperStrategy(Strategy[PaperOptions]):
    name = "paper"
    summary = (
        "input rows (gate_proj, optionally up_proj) of the safety neurons, fitted to move low-resource MLP "
        "inputs to the reference-language pre-activation"
    )
    table_row = TableRow(
        keys="MLP input of low-resource harmful prompts",
        target="reference pre-activation of the safety neurons, `(X_ref − X_low) W_S` (parallel by id, or the "
        "reference class mean with `--target class-mean`)",
        writes="`gate_proj` rows of the reference safety neurons (`--proj gate,up` adds `up_proj`; GPT-2: `c_fc` "
        "columns; Phi-3: fused rows at offset 0 and d_ff)",
    )
    gram_site = "mlp_input"
    settings_model = PaperOptions
    search_space = (Tunable("gamma", 0.1, 10.0, log=True), Tunable("proj", choices=("gate", "gate,up")))

    def needs(self, settings: PaperOptions) -> FeatureNeeds:
        return FeatureNeeds(sites=("mlp_input",))

    def neurons(
        self, artifact: LocateArtifact, layer: int, settings: PaperOptions, reference: str, low_langs: list[str]
    ) -> torch.Tensor:
        return artifact.neuron_set(settings.neuron_lang or reference, layer)

    def solve(self, job: SolveJob[PaperOptions]) -> tuple[list[SliceEdit], dict[str, Any]]:
        assert job.neurons is not None
        own = job.settings
        projections: list[Projection] = ["gate", "up"] if own.proj == "gate,up" else ["gate"]
        settings = SolveSettings(own.gamma, own.lam, own.rank, own.nullspace, own.nullspace_threshold)
        return paper_candidate(job.layer, job.neurons, job.checkpoint, projections, job.data, settings, job.share)


def paper_candidate(
    layer: int,
    neurons: torch.Tensor,
    checkpoint: Checkpoint,
    projections: list[Projection],
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
        keys, targets = target_points(d, "mlp_input")
        return EditProblem(
            keys, share * (targets - keys) @ w_s, data.harmless_gram["mlp_input"], data.harmless_tokens
        )

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
    diagnostics = solve_diagnostics(
        solution.rank, solution.jitter, solution.nullspace_dim, train, delta, w_s, data, "mlp_input"
    )
    if data.dev is not None and data.dev.low_rows["mlp_input"].shape[0]:
        dev = problem(data.dev)
        diagnostics["fit_dev"] = fit_ratio(dev.keys, dev.targets, delta)
        diagnostics["leak_dev"] = leak_ratio(data.dev.harmless_gram["mlp_input"], delta, w_s)
    return edits, diagnostics


STRATEGY = PaperStrategy()
