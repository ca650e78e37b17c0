"""Chains of strategies (``paper+detector``): each part solved in turn, verified, reverted, searched."""

from __future__ import annotations

import json

import pytest
import torch

from sparse_edit.architectures import NeuronSlice
from sparse_edit.edit.candidates import Candidate, require_disjoint
from sparse_edit.edit.delta import EditDelta, SliceEdit
from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import DELTA_FILE
from sparse_edit.options import ApplyOptions
from tests.helpers import apply_args, changed_rows, run_cli

DETECTOR = ("--detector-margin", "1.0", "--detector-sharpness", "6", "--gain", "1.0")


@pytest.mark.parametrize("chain", ["paper+detector", "detector+paper"])
def test_a_chain_edits_with_both_parts_verifies_and_reverts(located, tmp_path, chain):
    model, artifact = located("llama")
    out = tmp_path / "edited"
    manifest = json.loads(run_cli(*apply_args(artifact, out, "--strategy", chain, *DETECTOR), "--json").stdout)
    assert manifest["strategy"] == chain
    first, second = chain.split("+")
    assert [row["strategy"] for row in manifest["diagnostics"]["per_layer"]] == [first, second]

    delta = EditDelta.load(out / DELTA_FILE)
    detector = [e for e in delta.edits if not e.leak_checked]
    paper = [e for e in delta.edits if e.leak_checked]
    assert sorted(e.projection for e in detector) == ["down", "gate", "up"]
    assert paper and all(e.projection == "gate" for e in paper)
    assert manifest["changed_parameters"] == sum(e.changed_parameters for e in delta.edits)
    # The detector's neuron is not one of the paper edit's rows: each part replaces rows no other part touched.
    (neuron,) = {int(e.neurons.item()) for e in detector}
    assert neuron not in set(paper[0].neurons.tolist())
    assert "model.layers.1.mlp.down_proj.weight" in changed_rows(model, out)

    # verify recomputes the paper part's leak from its Gram, and leaves the rewritten neuron out of it.
    report = run_cli("verify", model, out).stdout
    assert all(line.startswith("ok") for line in report.splitlines())
    assert "harmless leak" in report
    restored = tmp_path / "restored"
    run_cli("revert", out, "-o", restored)
    assert not changed_rows(model, restored)


def test_the_later_part_is_solved_on_features_with_the_earlier_edit_applied(located, tmp_path):
    _, artifact = located("llama")
    alone, chained = tmp_path / "alone", tmp_path / "chained"
    run_cli(*apply_args(artifact, alone, "--strategy", "detector", *DETECTOR))
    run_cli(*apply_args(artifact, chained, "--strategy", "paper+detector", *DETECTOR))
    by_projection = {}
    for folder in (alone, chained):
        edits = [e for e in EditDelta.load(folder / DELTA_FILE).edits if e.projection == "down"]
        by_projection[folder.name] = edits[0].rows_delta
    # The same neuron, but its output scale is fitted to the gap the paper edit left.
    assert not torch.allclose(by_projection["alone"], by_projection["chained"])


def test_chains_that_cannot_be_verified_or_name_a_strategy_twice_are_refused(located, tmp_path):
    _, artifact = located("llama")
    out = tmp_path / "edited"
    result = run_cli(*apply_args(artifact, out, "--strategy", "paper+output"), code=2)
    assert "chain one of them with detector" in result.output
    assert not out.exists()
    with pytest.raises(ValueError, match="names a strategy twice"):
        ApplyOptions.model_validate(
            {"model": "m", "artifact": "a", "output": "o", "harmful": ["h"], "strategy": ["paper+paper"]}
        )
    with pytest.raises(ValueError, match="unknown strategy 'bogus'"):
        ApplyOptions.model_validate(
            {"model": "m", "artifact": "a", "output": "o", "harmful": ["h"], "strategy": ["paper+bogus"]}
        )


def slice_edit(tensor: str, offset: int, neurons: list[int]) -> SliceEdit:
    index = torch.tensor(neurons)
    return SliceEdit(
        1, "gate", NeuronSlice(tensor, 0, offset), index, torch.zeros(len(neurons), 1), torch.zeros(1, 4)
    )


def test_a_part_may_not_edit_rows_an_earlier_part_edited():
    candidate = Candidate("paper+detector", (1,), [slice_edit("fused", 0, [1, 2])])
    require_disjoint(candidate, [slice_edit("fused", 8, [2])], "detector")  # the up half of a fused tensor
    require_disjoint(candidate, [slice_edit("other", 0, [2])], "detector")
    with pytest.raises(SparseEditError, match="earlier part of the chain"):
        require_disjoint(candidate, [slice_edit("fused", 0, [3, 2])], "detector")


def test_the_search_varies_a_chains_settings_once_each():
    import optuna

    from sparse_edit.tuning.space import SearchSpace, searchable

    fields = [t.field for t in searchable("output+detector")]
    assert fields.count("gain") == 1  # both parts read --gain: one value
    assert {"max_edit_neurons", "detector_margin", "detector_neurons"} <= set(fields)
    space = SearchSpace(("paper+detector",), (1,))
    values = {"strategy": "paper+detector", "layer": 1, "paper+detector.gamma": 0.5, "paper+detector.proj": "gate"}
    values |= {"paper+detector.gain": 2.0, "paper+detector.detector_margin": 1.0}
    values |= {"paper+detector.detector_sharpness": 8.0, "paper+detector.detector_neurons": "one"}
    values |= {"paper+detector.detector_reference": "quiet"}
    settings = space.suggest(optuna.trial.FixedTrial(values))
    assert settings["strategy"] == ["paper+detector"] and settings["gamma"] == 0.5 and settings["gain"] == 2.0
    assert settings["detector_reference"] == "quiet"


@pytest.mark.parametrize("chain", ["paper+detector", "detector+paper"])
def test_the_detector_repurposes_a_neuron_no_other_part_of_the_chain_edits(located, tmp_path, monkeypatch, chain):
    from sparse_edit.edit import strategies

    _, artifact = located("llama")
    alone = tmp_path / "alone"
    run_cli(*apply_args(artifact, alone, "--strategy", "detector", *DETECTOR))
    (quietest,) = {int(e.neurons.item()) for e in EditDelta.load(alone / DELTA_FILE).edits}
    # The paper part's safety neurons now include the neuron the detector would repurpose on its own.
    monkeypatch.setattr(
        type(strategies.get("paper")), "neurons", lambda *_: torch.tensor([quietest, (quietest + 1) % 16])
    )
    out = tmp_path / "chained"
    run_cli(*apply_args(artifact, out, "--strategy", chain, *DETECTOR))
    edits = EditDelta.load(out / DELTA_FILE).edits
    (repurposed,) = {int(e.neurons.item()) for e in edits if not e.leak_checked}
    assert repurposed != quietest
    assert {int(n) for e in edits if e.leak_checked for n in e.neurons} == {quietest, (quietest + 1) % 16}
