"""What apply will try: strategies × layer sets, and the neuron set each strategy edits at each layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparse_edit.console import Reporter
from sparse_edit.edit import strategies
from sparse_edit.edit.anchors import Anchors
from sparse_edit.edit.strategies.base import SITE_ORDER, Strategy
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.measure.attribution import attribution_scores, top_neurons
from sparse_edit.model.features import Site
from sparse_edit.model.loading import LoadedModel
from sparse_edit.neurons.artifact import LocateArtifact
from sparse_edit.neurons.scores import jaccard
from sparse_edit.options import ApplyOptions, Options


def default_candidates(num_layers: int, recommended: int | None) -> list[int]:
    low, high = num_layers // 3, max(num_layers - 2, num_layers // 3)
    spread = {round(low + (high - low) * k / 3) for k in range(4)}
    if recommended is not None:
        spread.add(recommended)
    return sorted(layer for layer in spread if 0 <= layer < num_layers)


@dataclass
class Plan:
    """What apply will try: strategies x layer sets, and the neuron set of every (strategy, layer)."""

    strategies: list[str]
    layer_sets: list[tuple[int, ...]]
    neurons: dict[tuple[str, int], torch.Tensor]
    sites: list[Site]
    settings: dict[str, Options]  # each part's own settings (its strategy's settings model), read once
    notes: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)  # per-layer diagnostics

    def strategy(self, name: str) -> Strategy:
        return strategies.get(name)

    @property
    def parts(self) -> list[str]:
        """Every registered strategy the candidates use (a chain's parts), once each, in order."""
        return strategies.all_parts(self.strategies)


def rank_by_attribution(
    loaded: LoadedModel, anchors: Anchors, plan: Plan, options: ApplyOptions, reporter: Reporter
) -> None:
    """Replace each planned neuron set by as many neurons ranked by attribution patching.

    Records, per (strategy, layer), the overlap with the contrast set and both sets' first-order
    estimate of the patching gain (mean over training prompts of the summed scores).
    """
    scores: dict[int, torch.Tensor] = {}
    count = len(anchors.low_train)
    for (strategy, layer), contrast in list(plan.neurons.items()):
        if layer not in scores:
            scores[layer] = attribution_scores(
                loaded, anchors.low_train, anchors.ref_train, layer, options.batch_size, reporter
            )
        chosen = top_neurons(scores[layer], int(contrast.numel()))
        if not chosen.numel():
            raise SparseEditError(
                f"--neuron-score attribution: no neuron at layer {layer} raises refusal when moved toward "
                f"{options.reference_lang}; use --neuron-score contrast or another --layer"
            )
        plan.neurons[(strategy, layer)] = chosen
        plan.notes[(strategy, layer)] = {
            "jaccard_to_contrast_set": jaccard(contrast, chosen),
            "attribution_estimate": float(scores[layer][chosen].sum()) / count,
            "attribution_estimate_contrast_set": float(scores[layer][contrast].sum()) / count,
        }


def layer_sets(options: ApplyOptions, artifact: LocateArtifact, num_layers: int) -> list[tuple[int, ...]]:
    """The layer sets apply tries (one fixed set, or one candidate layer each), checked against the depth."""
    fixed = gate_layers(options) if options.layer == "gates" else options.fixed_layers(num_layers)
    sets: list[tuple[int, ...]] = (
        [fixed]
        if fixed
        else [
            (layer,)
            for layer in (options.candidate_layers or default_candidates(num_layers, artifact.recommended_layer))
        ]
    )
    flag = "--layer" if fixed or not options.candidate_layers else "--candidate-layers"
    for layers in sets:
        for layer in layers:
            if not 0 <= layer < num_layers:
                raise SparseEditError(f"{flag} {layer}: the model has layers 0..{num_layers - 1}")
    return sets


def gate_layers(options: ApplyOptions) -> tuple[int, ...]:
    """``--layer gates``: the layers the --detector-gate files read, in order."""
    from sparse_edit.gates.gate import Gate

    return tuple(sorted(Gate.load(path).settings.layer for path in options.detector_gate or []))


def check_settings(options: ApplyOptions, artifact: LocateArtifact) -> None:
    """What can be checked against the artifact alone, before the model is loaded: layers and chains."""
    sets = layer_sets(options, artifact, artifact.num_layers)
    for name in options.strategy:
        check_chain(name)
    if options.detector_gate is not None:
        check_gate(options, sets)


def check_gate(options: ApplyOptions, sets: list[tuple[int, ...]]) -> None:
    """Each --detector-gate reads one layer: the edit must be at exactly the gates' layers, one each, with one
    detector neuron in refuse mode."""
    assert options.detector_gate is not None
    flag = "--detector-gate " + " ".join(map(str, options.detector_gate))
    wanted = gate_layers(options)
    if len(set(wanted)) < len(wanted):
        raise SparseEditError(f"{flag}: two gates read the same layer; give one gate per layer")
    if any(tuple(sorted(edited)) != wanted for edited in sets):
        named = ",".join(map(str, wanted))
        raise SparseEditError(f"{flag}: the gates read layer(s) {named}; pass --layer {named}")
    if options.detector_neurons != "one" or options.detector_mode != "refuse":
        raise SparseEditError(
            f"{flag}: a gate is one neuron in refuse mode; drop --detector-neurons/--detector-mode"
        )


def check_gate_model(options: ApplyOptions, checkpoint: Checkpoint) -> None:
    """Every --detector-gate must have been fitted on this model's states (same weights layout and width)."""
    from sparse_edit.gates.gate import Gate

    for path in options.detector_gate or []:
        gate = Gate.load(path)
        flag = f"--detector-gate {path}"
        if gate.model_fingerprint != checkpoint.fingerprint():
            raise SparseEditError(f"{flag}: fitted on another model's states; run sparse-edit gates on --model")
        if gate.direction.shape[0] != checkpoint.dims.hidden_size:
            raise SparseEditError(
                f"{flag}: a gate of width {gate.direction.shape[0]}; the model's states have "
                f"{checkpoint.dims.hidden_size}"
            )


def make_plan(options: ApplyOptions, artifact: LocateArtifact, num_layers: int, low_langs: list[str]) -> Plan:
    check_settings(options, artifact)
    sets = layer_sets(options, artifact, num_layers)
    parts = strategies.all_parts(options.strategy)
    settings = {name: strategies.get(name).settings_model.of(options) for name in parts}
    neurons: dict[tuple[str, int], torch.Tensor] = {}
    for name in parts:
        strategy = strategies.get(name)
        for layers in sets:
            for layer in layers:
                chosen = strategy.neurons(artifact, layer, settings[name], options.reference_lang, low_langs)
                if chosen is not None:  # None: the strategy picks its neurons when solving
                    neurons[(name, layer)] = chosen
    usable = [ls for ls in sets if all(index.numel() for (_, layer), index in neurons.items() if layer in ls)]
    if not usable:
        raise SparseEditError("no neurons to edit at the requested layer(s); pick another --layer or neuron set")
    wanted = {site for name in parts for site in strategies.get(name).needs(settings[name]).sites}
    sites: list[Site] = [site for site in SITE_ORDER if site in wanted]
    return Plan(list(options.strategy), usable, neurons, sites, settings)


def check_chain(name: str) -> None:
    """A chain may hold one low-rank strategy: verify recomputes one harmless leak per layer, from one Gram."""
    checked = [part for part in strategies.chain_parts(name) if strategies.get(part).gram_site is not None]
    if len(checked) > 1:
        raise SparseEditError(
            f"--strategy {name}: {checked[0]} and {checked[1]} are both low-rank edits whose leak verify checks "
            "from one Gram per layer; chain one of them with detector"
        )
