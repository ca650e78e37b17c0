"""A gate on a tiny real checkpoint: ``gates`` caches and screens, ``apply --detector-gate`` writes it into a
neuron, and the written neuron fires where the screened gate does (and no longer does once perturbed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import sparse_edit as se
from sparse_edit.cli import app
from sparse_edit.gates.agreement import agreement_on_states, written_gate_row
from sparse_edit.gates.cache import TOKEN_GROUP, FeatureCache
from sparse_edit.gates.gate import Gate
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import MANIFEST_FILE
from sparse_edit.testing import build_tiny_model
from tests.helpers import apply_args, parallel_prompt_files, refused, run_cli, runner
from tests.test_tune import TRIAL_FLAGS


@pytest.fixture(scope="module")
def gated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gated")
    build_tiny_model(root / "base", "llama", layers=3, hidden=32, mlp=64)
    harmful, harmless = parallel_prompt_files(root, langs=("en", "th", "yo"), count=24, suffix=(" !!", ""))
    common = ["--model", root / "base", "--harmful", harmful, "--harmless", harmless, "--device", "cpu", "-q"]
    run_cli(
        "gates",
        *common,
        "--layers",
        "1",
        "--folds",
        "4",
        "--max-firing",
        "0.1",
        "--no-heatmap",
        "-o",
        root / "gates",
    )
    run_cli("locate", *common, "--tau-stat", "0.3", "-o", root / "art.safetensors")
    gate = root / "gates" / "gate.safetensors"
    run_cli(
        *apply_args(root / "art.safetensors", root / "edited"),
        "--strategy",
        "detector",
        "--detector-gate",
        gate,
        "--detector-reference",
        "fire",
        "--detector-response",
        "square",
    )
    step = ["--strategy", "detector", "--detector-gate", str(gate), "--detector-response", "step"]
    # The same anchors for both pairs (harmless replies included), so only where they push differs.
    every_token = ["--detector-push-at", "every-token", "--harmless-reply-tokens", "24"]
    run_cli(*apply_args(root / "art.safetensors", root / "edited-step", *step, *every_token))
    run_cli(*apply_args(root / "art.safetensors", root / "edited-end", *step, "--detector-push-at", "prompt-end"))
    return root


def test_gates_writes_the_caches_the_report_and_a_gate_that_names_its_split(gated):
    payload = json.loads((gated / "gates" / "ceiling.json").read_text())
    assert payload["screen"]["candidates"] == len(json.loads((gated / "gates" / "screen.json").read_text()))
    assert payload["chosen"]["settings"]["layer"] == 1
    layer = payload["ceiling"]["layers"]["1"]["anchor"]
    assert set(layer["auc"]) == {"en", "th", "yo"}
    markdown = (gated / "gates" / "ceiling.md").read_text()
    assert "out of fold" in markdown and "| layer |" in markdown
    cache = FeatureCache.load(gated / "gates" / "features-anchor.safetensors")
    assert len(cache) == 3 * 24 * 2 and cache.layers == (1,)
    # Earlier tokens of harmless prompts are kept, and the gate's firing on them is reported like a source's.
    assert len(cache.token_owner) and all(not cache.harmful[i] for i in cache.token_owner)
    assert TOKEN_GROUP in payload["chosen"]["predicted"]["firing"]
    # What limits the chosen gate: lifting one source's limit, or loosening every limit, never catches less.
    limiting = payload["limiting"]
    base = limiting["catch_non_reference"]
    assert set(limiting["lifted"]) == set(payload["chosen"]["predicted"]["firing"])
    assert all(entry["catch_non_reference"] >= base - 1e-12 for entry in limiting["lifted"].values())
    assert list(limiting["looser"]) == ["0.05", "0.1"] and limiting["looser"]["0.1"] >= base - 1e-12
    assert "What limits" in markdown


def test_the_written_neuron_fires_where_the_screened_gate_does(gated):
    gate = Gate.load(gated / "gates" / "gate.safetensors")
    cache = FeatureCache.load(gated / "gates" / "features-anchor.safetensors")
    fires = gate.fires(cache.rows(1))
    assert 0 < fires.mean() < 1  # a gate that decides something
    result = se.gate_agreement(
        gated / "edited",
        gated / "gates" / "gate.safetensors",
        gated / "gates" / "features-anchor.safetensors",
        device="cpu",
    )
    assert result.share >= 0.99 and result.prompts == len(cache)


def test_the_agreement_check_fails_when_the_written_gate_is_perturbed(gated):
    gate = Gate.load(gated / "gates" / "gate.safetensors")
    cache = FeatureCache.load(gated / "gates" / "features-anchor.safetensors")
    x = cache.rows(1)
    row = written_gate_row(gated / "edited", 1)
    assert agreement_on_states(gate, row, x, x).share >= 0.99
    rng = np.random.default_rng(0)
    perturbed = row + rng.normal(0, 1.0, row.shape) * np.linalg.norm(row) / np.sqrt(len(row))
    assert agreement_on_states(gate, perturbed, x, x).share < 0.99
    assert agreement_on_states(gate, -row, x, x).share < 0.5


def _pair_rows(edited: Path, layer: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The manifest row, the gate rows and the up rows of the step pair ``apply`` wrote at ``layer``."""
    row = json.loads((edited / MANIFEST_FILE).read_text())["diagnostics"]["per_layer"][0]
    checkpoint = Checkpoint.open(edited)
    neurons = torch.tensor(row["repurposed_neuron"])
    rows = {
        name: checkpoint.family.neuron_slice(layer, name, checkpoint.dims.mlp_width) for name in ("gate", "up")
    }
    gates, ups = (rows[n].read(checkpoint.load_tensor(rows[n].tensor), neurons).double() for n in ("gate", "up"))
    return row, gates, ups


def test_a_step_pair_fires_where_the_gate_does_and_pushes_every_firing_prompt_alike(gated):
    row, gates, ups = _pair_rows(gated / "edited-step", 1)
    assert row["detector_response"] == "step" and len(row["repurposed_neuron"]) == 2
    gate = Gate.load(gated / "gates" / "gate.safetensors")
    cache = FeatureCache.load(gated / "gates" / "features-anchor.safetensors")
    x = cache.rows(1)
    assert agreement_on_states(gate, written_gate_row(gated / "edited-step", 1), x, x).share >= 0.99
    states = torch.from_numpy(x)
    bias = states @ ups[0]  # u·x: near 1 on real models (spread 1 %); a random tiny model's is wider
    assert torch.allclose(ups[0], ups[1]) and abs(float(bias.mean()) - 1) < 0.1
    silu = torch.nn.functional.silu
    pair = (silu(states @ gates[0]) - silu(states @ gates[1])) * bias  # the pair's response as written
    pair = pair / bias**2  # past the ramp it is κδ·(u·x)²: flat once the bias read-out is divided out
    scores = torch.from_numpy(x @ gate.direction)
    past, below = pair[scores > 0.5], pair[scores < -0.5]
    assert len(past) and len(below)
    assert float(past.std() / past.mean()) < 0.05
    assert float(below.abs().max()) < 0.1 * float(past.mean())


def test_a_prompt_end_pair_pushes_at_the_prompts_last_tokens_and_not_on_earlier_ones(gated):
    row, gates, ups = _pair_rows(gated / "edited-end", 1)
    assert row["detector_push_at"] == "prompt-end"
    gate = Gate.load(gated / "gates" / "gate.safetensors")
    cache = FeatureCache.load(gated / "gates" / "features-anchor.safetensors")
    ends, earlier = torch.from_numpy(cache.rows(1)), torch.from_numpy(cache.token_rows(1))
    # The gate row is the gate's, as with every-token up rows: the agreement check still holds.
    assert agreement_on_states(gate, gates[0].numpy(), cache.rows(1), cache.rows(1)).share >= 0.99
    end_read, earlier_read = ends @ ups[0], earlier @ ups[0]
    assert abs(float(end_read.mean()) - 1) < 0.2
    assert float(earlier_read.pow(2).mean().sqrt()) < 0.5 * float(end_read.mean())
    assert row["up_rms_harmless_tokens"] < 0.5

    silu = torch.nn.functional.silu

    def push(states: torch.Tensor, gate_rows: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return ((silu(states @ gate_rows[0]) - silu(states @ gate_rows[1])) * (states @ up)).abs()

    # Earlier tokens where the gate row fires: the every-token pair pushes there, the prompt-end pair much less.
    firing = earlier[(earlier @ gates[0]) > 0]
    _, step_gates, step_ups = _pair_rows(gated / "edited-step", 1)
    assert len(firing), "the tiny gate fires on some earlier token"
    assert float(push(firing, gates, ups[0]).mean()) < 0.5 * float(push(firing, step_gates, step_ups[0]).mean())


def test_naming_gates_alone_applies_the_gate_edit_at_the_gates_layers(gated, tmp_path):
    gate = gated / "gates" / "gate.safetensors"
    out = tmp_path / "implied"
    run_cli(
        "apply",
        "--artifact",
        gated / "art.safetensors",
        "--detector-gate",
        gate,
        "--device",
        "cpu",
        "-q",
        "-o",
        out,
    )
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    row = manifest["diagnostics"]["per_layer"][0]
    assert manifest["strategy"] == "detector" and row["layer"] == Gate.load(gate).settings.layer
    assert row["detector_response"] == "step" and row["detector_push_at"] == "prompt-end"
    assert manifest["settings"]["gain"] == 16.0 and manifest["settings"]["harmless_reply_tokens"] == 24
    # A setting given beside the gate holds; two gates double the implied gain.
    art = gated / "art.safetensors"
    given = se.apply_options(
        artifact=art, output="o", detector_gate=[gate, gate], detector_response="square", gain=4.0
    )
    assert (given.layer, given.detector_response, given.detector_push_at, given.gain) == (
        "gates",
        "square",
        "every-token",
        4.0,
    )
    assert given.harmless_reply_tokens == 0  # only the prompt-end fit reads harmless replies
    assert se.apply_options(artifact=art, output="o", detector_gate=[gate, gate]).gain == 32.0


def test_gates_at_two_layers_are_written_in_one_edit_each_at_its_layer(gated):
    # A second gate, at layer 2, from the cache the first run wrote (its prompts; a layer-2 pass is made).
    common = [
        "--model",
        gated / "base",
        "--harmful",
        gated / "harmful.jsonl",
        "--harmless",
        gated / "harmless.jsonl",
    ]
    run_cli(
        "gates",
        *common,
        "--layers",
        "2",
        "--folds",
        "4",
        "--max-firing",
        "0.1",
        "--no-heatmap",
        "--device",
        "cpu",
        "-q",
        "-o",
        gated / "gates-2",
    )
    gates = [gated / "gates" / "gate.safetensors", gated / "gates-2" / "gate.safetensors"]
    out = gated / "edited-two"
    extra = ["--layer", "1,2", "--strategy", "detector", "--detector-gate", *map(str, gates)]
    run_cli(*apply_args(gated / "art.safetensors", out, *extra, "--detector-response", "step"))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["strategy"] == "detector"
    assert [row["layer"] for row in manifest["diagnostics"]["per_layer"]] == [1, 2]
    assert "ok" in run_cli("verify", gated / "base", out, "--skip-forward").output
    for path in gates:
        gate = Gate.load(path)
        layer = gate.settings.layer
        cache = FeatureCache.load(path.parent / "features-anchor.safetensors")
        x = cache.rows(layer)
        assert agreement_on_states(gate, written_gate_row(out, layer), x, x).share >= 0.99
    # The layers must be exactly the gates' layers.
    refused(
        gated,
        *APPLY_GATE,
        *map(str, gates),
        "--layer",
        "1",
        "--device",
        "cpu",
        "-o",
        "out",
        mentions=("pass --layer 1,2",),
    )


def test_tune_confirms_screened_gates_on_replies_and_reports_the_prediction_beside_them(gated, tmp_path):
    front = sorted((gated / "gates" / "front").glob("gate-*.safetensors"))
    assert front, "the gates run writes the front's gates within --max-firing"
    args = ["tune", "--artifact", gated / "art.safetensors", "--candidate-gates", *front, "--trials", "2"]
    args += [*TRIAL_FLAGS, "-o", tmp_path / "study"]
    result = runner.invoke(app, [str(arg) for arg in args])
    assert result.exit_code in (0, 1), result.output  # 1: no trial met the limits; the study is written
    payload = json.loads((tmp_path / "study" / "pareto.json").read_text())
    assert len(payload["trials"]) == 2
    for trial in payload["trials"]:
        assert trial["settings"]["detector_gate"] in {str(path) for path in front}
        assert trial["settings"]["layer"] == "1" and trial["settings"]["strategy"] == ["detector"]
        assert 0 <= trial["screen"]["catch_non_reference"] <= 1
    assert "Screened gates" in (tmp_path / "study" / "pareto.md").read_text()


GATES = ["gates", "--model", "base", "--harmful", "harmful.jsonl", "--harmless", "harmless.jsonl"]
APPLY_GATE = ["apply", "--artifact", "art.safetensors", "--strategy", "detector", "--detector-gate"]


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        ([*GATES, "--layers", "9"], ("--layers 9", "layers 0..2")),
        ([*GATES, "--test-harmful", "harmful.jsonl"], ("--test-harmless",)),
        ([*GATES, "--limit-exempt", "nowhere"], ("--limit-exempt 'nowhere'", "no harmless anchor group")),
        ([*APPLY_GATE, "gates/gate.safetensors", "--layer", "2"], ("--detector-gate", "pass --layer 1")),
        (
            [*APPLY_GATE, "gates/features-anchor.safetensors", "--layer", "1"],
            ("--detector-gate", "not a sparse-edit gate"),
        ),
        (
            [
                *APPLY_GATE,
                "gates/gate.safetensors",
                "--detector-response",
                "square",
                "--detector-push-at",
                "prompt-end",
            ],
            ("--detector-push-at prompt-end needs --detector-response step",),
        ),
        (
            ["apply", "--artifact", "art.safetensors", "--strategy", "detector", "--layer", "gates"],
            ("--layer gates", "--detector-gate"),
        ),
    ],
)
def test_a_gate_setting_that_cannot_work_is_one_line_and_writes_nothing(gated, args, mentions):
    refused(gated, *args, "--device", "cpu", "-o", "out", mentions=mentions)
