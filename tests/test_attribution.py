from __future__ import annotations

import json

import pytest
import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.edit.delta import EditDelta
from sparse_edit.io.layout import DELTA_FILE
from sparse_edit.measure.attribution import attribution_scores, reference_activations, top_neurons
from sparse_edit.measure.probes import refusal_scores
from sparse_edit.model.batching import encode_prompts
from sparse_edit.model.loading import load_model
from sparse_edit.options import LocateOptions
from tests.helpers import apply_args, changed_rows, random_texts, run_cli

LAYER = 1


@pytest.fixture(scope="module")
def setting(tiny_models):
    loaded = load_model(LocateOptions.model_construct(model=tiny_models("qwen2"), device="cpu", dtype="float32"))
    loaded.model.to(torch.float64)  # exact enough for a finite difference
    low = [Prompt(str(i), "th", t, "harmful") for i, t in enumerate(random_texts("th", 6, seed=3))]
    ref = [Prompt(str(i), "en", t, "harmful") for i, t in enumerate(random_texts("en", 6, seed=4))]
    encode = lambda items: encode_prompts(loaded.tokenizer, items)  # noqa: E731
    return loaded, encode(low), encode(ref)


def patched_total(loaded, low, ref, neuron: int, step: float) -> float:
    """Summed refusal log-odds of ``low`` with neuron moved ``step`` of the way to its reference value."""
    by_id, _ = reference_activations(loaded, ref, LAYER, batch_size=4)
    ids: list[str] = []

    def hook(_module, args):
        activation = args[0].clone()
        for row, prompt_id in enumerate(ids):
            gap = by_id[prompt_id][neuron] - activation[row, -1, neuron]
            activation[row, -1, neuron] += step * gap
        return (activation, *args[1:])

    module = loaded.family.out_proj(loaded.model, LAYER)
    handle = module.register_forward_pre_hook(hook)
    try:
        scores = refusal_scores(
            loaded,
            low,
            4,
            before_batch=lambda batch: ids.__setitem__(slice(None), [i.prompt.id for i in batch.items]),
        )
    finally:
        handle.remove()
    return sum(sum(values) for values in scores.values())


def test_scores_match_a_finite_difference_of_patching(setting):
    loaded, low, ref = setting
    scores = attribution_scores(loaded, low, ref, LAYER, batch_size=4, reporter=Reporter(quiet=True))
    assert scores.shape == (loaded.checkpoint.dims.mlp_width,) and scores.dtype == torch.float64
    assert float(scores.abs().max()) > 1e-3  # a real signal, not a vacuous comparison
    step = 0.05  # central difference; the log-odds are computed in float32
    for neuron in torch.argsort(scores.abs(), descending=True)[:3].tolist():
        up, down = (patched_total(loaded, low, ref, neuron, s) for s in (step, -step))
        estimate = (up - down) / (2 * step)
        assert estimate == pytest.approx(float(scores[neuron]), rel=0.02)
    # Gradients leave no trace on the model.
    assert all(p.grad is None for p in loaded.model.parameters())


def test_top_neurons_keeps_only_positive_scores():
    scores = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    assert top_neurons(scores, 2).tolist() == [2, 4]
    assert top_neurons(scores, 5).tolist() == [0, 2, 4]


def test_apply_with_attribution_edits_the_ranked_neurons(located, tmp_path):
    model, artifact = located("llama")
    out = tmp_path / "edited"
    manifest = json.loads(run_cli(*apply_args(artifact, out, "--neuron-score", "attribution"), "--json").stdout)
    (row,) = manifest["diagnostics"]["per_layer"]
    # The ranked set is the best same-size set by the first-order estimate.
    assert row["attribution_estimate"] >= row["attribution_estimate_contrast_set"]
    assert 0.0 <= row["jaccard_to_contrast_set"] <= 1.0
    (edit,) = EditDelta.load(out / DELTA_FILE).edits
    changes = changed_rows(model, out)
    assert set(changes) == {edit.slice.tensor}
    touched = changes[edit.slice.tensor].any(dim=1 - edit.slice.axis).nonzero().flatten()
    assert set(touched.tolist()) <= set(edit.neurons.tolist())
    assert manifest["settings"]["neuron_score"] == "attribution"
    run_cli("verify", model, out)
