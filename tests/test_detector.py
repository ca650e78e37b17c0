"""The detector strategy: the closed-form probe, the neuron's threshold, and the written checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from sparse_edit.edit.delta import EditDelta
from sparse_edit.edit.strategies.detector_math import (
    bias_direction,
    fit_detector,
    harmless_output_energy,
    output_scale,
    response,
    step_response,
)
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import DELTA_FILE
from sparse_edit.model.hooks import capture
from tests.helpers import apply_args, changed_rows, run_cli

SILU = torch.nn.functional.silu


def clusters(seed: int = 0, d: int = 12, n: int = 80) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Harmful and harmless rows that share a large common offset (as normed hidden states do) and differ
    along one axis; a third group of harmless 'content tokens' sits elsewhere."""
    g = torch.Generator().manual_seed(seed)
    common = torch.zeros(d)
    common[0] = 5.0
    axis = torch.zeros(d)
    axis[1] = 1.0
    noise = lambda k: 0.3 * torch.randn(k, d, generator=g)  # noqa: E731
    harmful = common + 1.5 * axis + noise(n)
    harmless = common - 1.5 * axis + noise(n)
    tokens = common + torch.tensor([0.0, 0.0, 2.0] + [0.0] * (d - 3)) + noise(4 * n)
    return harmful, harmless, tokens


def test_probe_separates_classes_without_a_bias_term():
    harmful, harmless, tokens = clusters()
    w = fit_detector(harmful, harmless, tokens.T.double() @ tokens.double(), tokens.sum(0), len(tokens), 1.0, 1e-3)
    assert (harmful.double() @ w > 0).double().mean() > 0.95
    assert (harmless.double() @ w < 0).double().mean() > 0.95
    assert (tokens.double() @ w < 0).double().mean() > 0.95  # the harmless token moments pull content tokens down
    # A larger margin pushes harmless scores further below zero.
    wide = fit_detector(
        harmful, harmless, tokens.T.double() @ tokens.double(), tokens.sum(0), len(tokens), 3.0, 1e-3
    )
    assert float((harmless.double() @ wide).mean()) < float((harmless.double() @ w).mean())


def test_neuron_response_is_a_threshold_at_zero():
    scores = torch.tensor([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0])
    out = response(scores, SILU, 8.0)
    assert torch.all(out[:3].abs() < 0.02 * out[3:].min())  # negative scores: next to nothing
    assert torch.all(out[3:] > 0) and torch.all(out[4:] / out[3:-1] > 2)  # positive: grows ~ k s^2


def test_step_response_is_flat_past_the_ramp_and_zero_below_the_threshold():
    scores = torch.tensor([-2.0, -1.0, -0.3, 0.3, 0.6, 1.0, 3.0, 10.0])[:, None]
    out = step_response(scores, torch.ones(len(scores)), SILU, 8.0, 0.25)[:, 0]
    assert torch.all(out[:3].abs() < 0.05 * out[3:].min())
    assert torch.all((out[3:] - 8.0).abs() < 0.3)  # every firing score past the ramp gets the same push
    square = response(scores[:, 0], SILU, 8.0)
    assert float(square[-1] / square[3]) > 100  # what the step replaces: 0.3 and 10 pushed 1000x apart


def test_bias_direction_reads_one_on_every_token_of_a_shared_offset():
    harmful, harmless, tokens = clusters()
    rows = torch.cat([harmless, tokens]).double()
    u = bias_direction(rows.T @ rows, rows.sum(0), len(rows))
    for group in (harmless, tokens):
        values = group.double() @ u
        assert abs(float(values.mean()) - 1) < 0.05 and float(values.std()) < 0.1
    assert abs(float((harmful.double() @ u).mean()) - 1) < 0.2  # not fitted on, still near 1
    with pytest.raises(SparseEditError, match="no harmless tokens"):
        bias_direction(rows.T @ rows, rows.sum(0), 0)


def test_output_scale_is_the_least_squares_fit_and_refuses_a_silent_detector():
    responses = torch.tensor([0.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    wanted = 3.0 * responses + torch.tensor([0.5, 0.1, -0.1, 0.0], dtype=torch.float64)
    tau = output_scale(responses, wanted)
    grid = torch.linspace(tau - 0.1, tau + 0.1, 21, dtype=torch.float64)
    losses = [float(((t * responses - wanted) ** 2).sum()) for t in grid]
    assert min(losses) == pytest.approx(float(((tau * responses - wanted) ** 2).sum()))
    with pytest.raises(SparseEditError, match="does not fire"):
        output_scale(torch.zeros(3), torch.ones(3))


def test_harmless_output_energy_weighs_activations_by_the_output_column():
    squares = torch.tensor([4.0, 1.0, 0.0])
    down = torch.tensor([[1.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    assert harmless_output_energy(squares, down).tolist() == [4.0, 9.0, 0.0]


def detector_args(artifact, out, *extra: str) -> list[str]:
    return apply_args(artifact, out, "--strategy", "detector", *extra)


@pytest.mark.parametrize("model_type", ["qwen2", "gemma3_text", "phi3"])
def test_detector_rewrites_one_neuron_as_its_probe_and_verifies(located, tmp_path, model_type):
    model, artifact = located(model_type)
    out = tmp_path / "edited"
    manifest = json.loads(run_cli(*detector_args(artifact, out, "--detector-sharpness", "6"), "--json").stdout)
    assert manifest["strategy"] == "detector"
    delta = EditDelta.load(out / DELTA_FILE)
    assert sorted(e.projection for e in delta.edits) == ["down", "gate", "up"]
    (neuron,) = {int(e.neurons.item()) for e in delta.edits}
    row = manifest["diagnostics"]["per_layer"][0]
    assert row["repurposed_neuron"] == neuron and row["neurons"] == 1
    ckpt = Checkpoint.open(model)
    d = ckpt.dims.hidden_size
    assert manifest["changed_parameters"] == 3 * d

    # Only that neuron's three weight vectors changed (phi3: gate and up rows of one fused tensor).
    changes = changed_rows(model, out)
    assert set(changes) == {e.slice.tensor for e in delta.edits}
    for edit in delta.edits:
        mask = changes[edit.slice.tensor]
        touched = set(mask.any(dim=1 - edit.slice.axis).nonzero().flatten().tolist())
        planned = {
            int(e.neurons.item()) + e.slice.offset for e in delta.edits if e.slice.tensor == edit.slice.tensor
        }
        assert touched <= planned and touched
    edited = Checkpoint.open(out)
    rows = {
        e.projection: e.slice.read(edited.load_tensor(e.slice.tensor), e.neurons).float()[0] for e in delta.edits
    }
    assert torch.allclose(rows["gate"], 6.0 * rows["up"], rtol=1e-2, atol=1e-5)  # gate = sharpness x detector
    assert all(line.startswith("ok") for line in run_cli("verify", model, out).stdout.splitlines())

    # In the written model the neuron computes act(k s) s of its probe score s, for every token.
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    layer = delta.edits[0].layer
    seen: dict[int, torch.Tensor] = {}
    inputs: dict[int, torch.Tensor] = {}
    ids = torch.randint(10, 200, (2, 9), generator=torch.Generator().manual_seed(1))
    with (
        capture(ckpt.family, loaded, [layer], "neurons", seen.__setitem__),
        capture(ckpt.family, loaded, [layer], "mlp_input", inputs.__setitem__),
        torch.no_grad(),
    ):
        loaded(input_ids=ids)
    scores = inputs[layer].double() @ rows["up"].double()
    expected = response(scores, ckpt.gate_activation(), 6.0)
    assert torch.allclose(seen[layer][..., neuron].double(), expected, rtol=1e-4, atol=1e-6)


def test_detector_is_deterministic(located, tmp_path):
    _, artifact = located("llama")
    first, second = tmp_path / "a", tmp_path / "b"
    run_cli(*detector_args(artifact, first))
    run_cli(*detector_args(artifact, second))
    assert (first / DELTA_FILE).read_bytes() == (second / DELTA_FILE).read_bytes()


def test_detector_needs_a_gated_mlp(located, tmp_path):
    _, artifact = located("gpt2")
    out = tmp_path / "edited"
    result = run_cli(*detector_args(artifact, out), code=2)
    assert "--strategy detector needs a gated MLP" in result.output and not out.exists()


def test_release_mode_lowers_the_refusal_projection_and_verifies(located, tmp_path):
    model, artifact = located("llama")
    out = tmp_path / "released"
    manifest = json.loads(run_cli(*detector_args(artifact, out, "--detector-mode", "release"), "--json").stdout)
    row = manifest["diagnostics"]["per_layer"][0]
    assert row["detector_mode"] == "release" and manifest["settings"]["detector_mode"] == "release"
    # The output column points against the refusal direction (the refuse detector's along it), and the fit
    # closes part of the gap. Which rows fire is tested on separable data (test_probe_classes_swap_for_release):
    # random tiny models barely tell their two prompt classes apart.
    assert row["detector_scale"] < 0 and row["fit_train"] < 1.0
    assert all(line.startswith("ok") for line in run_cli("verify", model, out).stdout.splitlines())
    refuse = json.loads(run_cli(*detector_args(artifact, tmp_path / "refuse"), "--json").stdout)
    assert refuse["diagnostics"]["per_layer"][0]["detector_scale"] > 0


def test_probe_classes_swap_for_release():
    harmful, harmless, tokens = clusters()
    w = fit_detector(harmless, harmful, tokens.T.double() @ tokens.double(), tokens.sum(0), len(tokens), 1.0, 1e-3)
    assert (harmless.double() @ w > 0).double().mean() > 0.95
    assert (harmful.double() @ w < 0).double().mean() > 0.95
    assert (tokens.double() @ w < 0).double().mean() > 0.95


def test_per_language_detector_gives_each_language_a_neuron_with_a_non_negative_scale(located, tmp_path):
    model, artifact = located("llama")
    out = tmp_path / "edited"
    manifest = json.loads(
        run_cli(*detector_args(artifact, out, "--detector-neurons", "per-language"), "--json").stdout
    )
    row = manifest["diagnostics"]["per_layer"][0]
    assert len(row["repurposed_neuron"]) == 2 and row["neurons"] == 2  # th and yo
    assert all(scale >= 0 for scale in row["detector_scale"])
    delta = EditDelta.load(out / DELTA_FILE)
    assert {tuple(e.neurons.tolist()) for e in delta.edits} == {tuple(row["repurposed_neuron"])}
    d = Checkpoint.open(model).dims.hidden_size
    assert manifest["changed_parameters"] == 2 * 3 * d
    edited = Checkpoint.open(out)
    rows = {e.projection: e.slice.read(edited.load_tensor(e.slice.tensor), e.neurons).float() for e in delta.edits}
    assert not torch.allclose(rows["up"][0], rows["up"][1])  # two probes, fitted on different languages
    assert all(line.startswith("ok") for line in run_cli("verify", model, out).stdout.splitlines())


def test_per_language_detector_refuses_release_mode(located, tmp_path):
    _, artifact = located("llama")
    out = tmp_path / "edited"
    args = detector_args(artifact, out, "--detector-neurons", "per-language", "--detector-mode", "release")
    result = run_cli(*args, code=2)
    assert "--detector-mode refuse only" in result.output and not out.exists()


def test_a_quiet_reference_probe_fires_on_low_resource_harmful_rows_only():
    harmful, harmless, tokens = clusters()
    language = torch.zeros(harmful.shape[1])
    language[3] = 2.0
    reference = harmful + language  # the same requests, in the reference language's own region
    gram, total = tokens.T.double() @ tokens.double(), tokens.sum(0)
    fire = fit_detector(torch.cat([harmful, reference]), harmless, gram, total, len(tokens), 1.0, 1e-3)
    quiet = fit_detector(harmful, torch.cat([harmless, reference]), gram, total, len(tokens), 1.0, 1e-3)
    assert (reference.double() @ fire > 0).double().mean() > 0.95  # fire: English harmful prompts fire it too
    assert (reference.double() @ quiet < 0).double().mean() > 0.95  # quiet: English of either class keeps it still
    assert (harmful.double() @ quiet > 0).double().mean() > 0.9
    assert (harmless.double() @ quiet < 0).double().mean() > 0.95


def test_detector_reference_quiet_keeps_the_probe_below_the_reference_rows(located, tmp_path):
    model, artifact = located("llama")
    fired, quiet = tmp_path / "fire", tmp_path / "quiet"
    loud = json.loads(run_cli(*detector_args(artifact, fired), "--json").stdout)["diagnostics"]["per_layer"][0]
    still = json.loads(run_cli(*detector_args(artifact, quiet, "--detector-reference", "quiet"), "--json").stdout)
    row = still["diagnostics"]["per_layer"][0]
    assert row["fires_reference_harmful_train"] <= loud["fires_reference_harmful_train"]
    assert row["anchors_train"] < loud["anchors_train"]  # the reference rows left the positives
    assert all(line.startswith("ok") for line in run_cli("verify", model, quiet).stdout.splitlines())
    release = detector_args(
        artifact, tmp_path / "r", "--detector-reference", "quiet", "--detector-mode", "release"
    )
    assert "--detector-mode refuse only" in run_cli(*release, code=2).output
