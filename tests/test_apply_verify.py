from __future__ import annotations

import json

import pytest
import torch

from sparse_edit.edit.delta import EditDelta
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import DELTA_FILE, MANIFEST_FILE
from sparse_edit.testing import TINY_FAMILIES
from tests.helpers import apply_args, changed_rows, run_cli


def output_flags(columns: int) -> tuple[str, ...]:
    """The output strategy on ``columns`` neurons (the strongest of all), with a light harmless weight for tiny models."""
    return (
        "--strategy",
        "output",
        "--output-neurons",
        "all",
        "--max-edit-neurons",
        str(columns),
        "--output-gamma",
        "0.01",
    )


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_apply_fits_changes_only_planned_rows_and_verifies(located, tmp_path, model_type):
    model, artifact = located(model_type)
    out = tmp_path / "edited"
    manifest = json.loads(run_cli(*apply_args(artifact, out), "--json").stdout)
    assert manifest["diagnostics"]["fit_train"] < 0.5
    delta = EditDelta.load(out / DELTA_FILE)
    ckpt = Checkpoint.open(model)
    d_ff = ckpt.dims.mlp_width
    planned = {(e.slice.tensor, int(n) + e.slice.offset, e.slice.axis) for e in delta.edits for n in e.neurons}
    changes = changed_rows(model, out)
    assert set(changes) == {e.slice.tensor for e in delta.edits}
    for name, mask in changes.items():
        axis = next(e.slice.axis for e in delta.edits if e.slice.tensor == name)
        touched = mask.any(dim=1 - axis).nonzero().flatten().tolist()
        assert {(name, i, axis) for i in touched} <= planned
        assert touched, "the edit changed nothing"
        assert max(touched) < (d_ff if model_type != "phi3" else d_ff)  # gate rows of a fused tensor come first
    assert "passed" not in run_cli("verify", model, out).stdout  # all lines "ok"
    assert all(line.startswith("ok") for line in run_cli("verify", model, out).stdout.splitlines())


def test_phi3_gate_and_up_rows_use_the_fused_offset(located, tmp_path):
    model, artifact = located("phi3")
    out = tmp_path / "edited"
    run_cli(*apply_args(artifact, out, "--proj", "gate,up"))
    delta = EditDelta.load(out / DELTA_FILE)
    assert [e.slice.offset for e in delta.edits] == [0, 64]
    mask = changed_rows(model, out)["model.layers.1.mlp.gate_up_proj.weight"]
    rows = mask.any(dim=1).nonzero().flatten()
    neurons = delta.edits[0].neurons
    assert set(rows.tolist()) <= set(neurons.tolist()) | set((neurons + 64).tolist())
    assert (rows >= 64).any() and (rows < 64).any()


def test_two_runs_are_byte_identical(located, tmp_path):
    _, artifact = located("qwen2")
    for name in ("one", "two"):
        run_cli(*apply_args(artifact, tmp_path / name))
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for relative in files:
        assert (tmp_path / "one" / relative).read_bytes() == (tmp_path / "two" / relative).read_bytes(), relative


def test_bf16_sharded_reports_retention_and_reverts_exactly(located, tmp_path):
    model, artifact = located("llama", max_shard_size="20KB", dtype=torch.bfloat16)
    out = tmp_path / "edited"
    manifest = json.loads(run_cli(*apply_args(artifact, out), "--json").stdout)
    retention = manifest["diagnostics"]["retention"]
    assert set(retention) == {"model.layers.1.mlp.gate_proj.weight"}
    assert 0.5 < retention["model.layers.1.mlp.gate_proj.weight"] <= 1.05
    source = Checkpoint.open(model)
    untouched = [s for s in source.shards if s != source.tensors["model.layers.1.mlp.gate_proj.weight"].shard]
    for shard in untouched:
        assert (out / shard).read_bytes() == (model / shard).read_bytes()
    run_cli("verify", model, out)
    restored = tmp_path / "restored"
    run_cli("revert", out, "-o", restored)
    assert changed_rows(model, restored) == {}
    assert not (restored / "sparse_edit").exists()


def test_hard_nullspace_edit_stays_in_the_low_variance_subspace(located, tmp_path):
    model, artifact = located("llama")
    out = tmp_path / "edited"
    args = apply_args(artifact, out, "--nullspace", "hard", "--nullspace-threshold", "0.05")
    manifest = json.loads(run_cli(*args, "--json").stdout)
    assert manifest["diagnostics"]["nullspace_dim"] >= 1
    delta = EditDelta.load(out / DELTA_FILE)
    values, vectors = torch.linalg.eigh(delta.grams[1])
    busy = vectors[:, values >= 0.05 * values.max()]  # directions harmless tokens use
    change = delta.edits[0].rows_delta.double().T  # [d, m]
    assert float((busy.T @ change).norm() / change.norm()) < 1e-4
    run_cli("verify", model, out)


def test_layer_auto_records_its_table(located, tmp_path):
    _, artifact = located("llama", layers=4)
    out = tmp_path / "edited"
    manifest = json.loads(
        run_cli(
            "apply",
            "--artifact",
            artifact,
            "-o",
            out,
            "--layer",
            "auto",
            "--candidate-layers",
            "1,2,3",
            "--device",
            "cpu",
            "-q",
            "--json",
        ).stdout
    )
    table = manifest["candidates"]
    assert [row["layers"] for row in table] == [[1], [2], [3]]
    assert all("kl_harmless" in row and "selective_gain" in row for row in table)
    best = max((r for r in table if r["kl_harmless"] <= 0.05), key=lambda r: r["selective_gain"])
    assert manifest["layers"] == best["layers"]


def test_verify_catches_tampering(located, tmp_path):
    from safetensors.torch import load_file, save_file

    model, artifact = located("llama")
    out = tmp_path / "edited"
    run_cli(*apply_args(artifact, out))
    tensors = load_file(str(out / "model.safetensors"))
    tensors["model.layers.0.self_attn.q_proj.weight"][0, 0] += 1
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    result = run_cli("verify", model, out, "--skip-forward", code=1)
    assert "FAIL  untouched" in result.stdout and "untouched" in result.stderr

    out2 = tmp_path / "edited2"
    run_cli(*apply_args(artifact, out2))
    delta = EditDelta.load(out2 / DELTA_FILE)
    tensors = load_file(str(out2 / "model.safetensors"))
    name, neuron = delta.edits[0].slice.tensor, int(delta.edits[0].neurons[0])
    tensors[name][neuron] *= 2
    save_file(tensors, str(out2 / "model.safetensors"), metadata={"format": "pt"})
    result = run_cli("verify", model, out2, "--skip-forward", code=1)
    assert "FAIL  matches delta" in result.stdout


def test_apply_refuses_bad_inputs(located, tiny_models, tmp_path):
    model, artifact = located("llama")
    result = run_cli(
        "apply",
        "--artifact",
        artifact,
        "--model",
        tiny_models("llama", layers=3),
        "-o",
        tmp_path / "x",
        "--device",
        "cpu",
        code=2,
    )
    assert "run locate on this model" in result.stderr and not (tmp_path / "x").exists()
    result = run_cli("apply", "--artifact", artifact, "-o", model, "--device", "cpu", code=2)
    assert "is the input --model" in result.stderr
    result = run_cli(
        "apply",
        "--artifact",
        tmp_path / "missing.safetensors",
        "--model",
        model,
        "--harmful",
        "a",
        "--harmless",
        "b",
        "-o",
        tmp_path / "y",
        code=2,
    )
    assert "no such artifact" in result.stderr
    result = run_cli(*apply_args(artifact, tmp_path / "z", "--layer", "9"), code=2)
    assert "--layer 9" in result.stderr and not (tmp_path / "z").exists()


def test_manifest_and_model_card(located, tmp_path):
    model, artifact = located("gemma3_text")
    out = tmp_path / "edited"
    run_cli(*apply_args(artifact, out))
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["base"]["fingerprint"] == Checkpoint.open(model).fingerprint()
    assert manifest["changed_parameters"] == sum(e["neurons"] for e in manifest["edits"]) * 32
    assert {"fit_train", "leak_train", "relative_norm", "rank", "retention"} <= set(manifest["diagnostics"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "layer(s) 1 " in card


@pytest.mark.parametrize("model_type", ["qwen2", "gpt2", "phi3"])
def test_output_strategy_edits_only_down_columns_of_its_neurons(located, tmp_path, model_type):
    model, artifact = located(model_type)
    out = tmp_path / "edited"
    manifest = json.loads(
        run_cli(
            *apply_args(artifact, out, *output_flags(40)),
            "--json",
        ).stdout
    )
    assert manifest["strategy"] == "output"
    assert manifest["diagnostics"]["fit_train"] < 0.5  # the refusal-projection gap at the layer closes
    delta = EditDelta.load(out / DELTA_FILE)
    (edit,) = delta.edits
    assert edit.projection == "down" and edit.neurons.numel() == 40
    changes = changed_rows(model, out)
    assert set(changes) == {edit.slice.tensor}
    touched = changes[edit.slice.tensor].any(dim=1 - edit.slice.axis).nonzero().flatten()
    assert set(touched.tolist()) <= set(edit.neurons.tolist())
    assert manifest["changed_parameters"] == 40 * 32
    run_cli("verify", model, out)
    again = tmp_path / "again"
    run_cli(*apply_args(artifact, again, *output_flags(40)))
    assert (again / DELTA_FILE).read_bytes() == (out / DELTA_FILE).read_bytes()


def test_sequential_two_layer_edit_verifies(located, tmp_path):
    model, artifact = located("llama")
    out = tmp_path / "edited"
    args = apply_args(artifact, out, *output_flags(32))
    args[args.index("--layer") + 1] = "0,1"
    manifest = json.loads(run_cli(*args, "--json").stdout)
    assert manifest["layers"] == [0, 1]
    assert [e["layer"] for e in manifest["edits"]] == [0, 1]
    assert [row["layer"] for row in manifest["diagnostics"]["per_layer"]] == [0, 1]
    assert set(changed_rows(model, out)) == {
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    }
    run_cli("verify", model, out)


def test_strategies_and_layers_are_compared_with_a_ceiling(located, tmp_path):
    _, artifact = located("llama", layers=4)
    out = tmp_path / "edited"
    manifest = json.loads(
        run_cli(
            "apply",
            "--artifact",
            artifact,
            "-o",
            out,
            "--strategy",
            "paper,output",
            "--candidate-layers",
            "1,2",
            "--output-neurons",
            "all",
            "--max-edit-neurons",
            "16",
            "--ceiling",
            "--device",
            "cpu",
            "-q",
            "--json",
        ).stdout
    )
    labels = [row["candidate"] for row in manifest["candidates"]]
    assert labels == ["paper@1", "paper@2", "output@1", "output@2"]
    assert all(isinstance(row["ceiling_gain_harmful"], float) for row in manifest["candidates"])
    assert manifest["selection_rule"].startswith("largest selective gain")


def test_apply_inherits_prompt_settings_from_the_artifact(tiny_models, prompts, tmp_path):
    model = tiny_models("llama")
    artifact = tmp_path / "a.safetensors"
    run_cli(
        "locate",
        "--model",
        model,
        "--harmful",
        prompts[0],
        "--harmless",
        prompts[1],
        "--languages",
        "en,th",
        "--limit",
        "6",
        "--device",
        "cpu",
        "-o",
        artifact,
        "-q",
    )
    manifest = json.loads(run_cli(*apply_args(artifact, tmp_path / "out"), "--json").stdout)
    settings = manifest["settings"]
    assert (settings["limit"], settings["languages"], settings["model"]) == (6, ["en", "th"], str(model))
    assert manifest["low_langs"] == ["th"]


def test_harmless_tail_rows_make_the_output_edit_selective(located, tmp_path):
    model, artifact = located("llama")

    def ratio(weight: str) -> float:
        out = tmp_path / f"edited-{weight}"
        manifest = json.loads(
            run_cli(
                *apply_args(artifact, out, *output_flags(40), "--harmless-tail-weight", weight), "--json"
            ).stdout
        )
        assert manifest["settings"]["harmless_tail_weight"] == float(weight)
        run_cli("verify", model, out)
        return manifest["diagnostics"]["per_layer"][0]["harmless_tail_ratio_train"]

    plain, held = ratio("0"), ratio("4")
    # Harmless last-token rows fitted to no shift move much less along the refusal direction.
    assert abs(held) < 0.5 * abs(plain)


def test_reference_rows_leave_the_reference_language_unshifted(located, tmp_path):
    model, artifact = located("llama")

    def ratios(weight: str) -> tuple[float, float]:
        out = tmp_path / f"reference-{weight}"
        manifest = json.loads(
            run_cli(*apply_args(artifact, out, *output_flags(40), "--reference-weight", weight), "--json").stdout
        )
        run_cli("verify", model, out)
        layer = manifest["diagnostics"]["per_layer"][0]
        return layer["reference_ratio_train"], layer["fit_train"]

    (plain, plain_fit), (held, held_fit) = ratios("0"), ratios("4")
    # Reference harmful rows fitted to no shift move much less; the low-resource gap still mostly closes.
    assert abs(held) < 0.5 * abs(plain)
    assert held_fit < 0.9 and held_fit >= plain_fit - 1e-9


def test_low_only_columns_leave_out_the_reference_languages_neurons(located):
    from sparse_edit.edit.strategies.output import edit_neurons
    from sparse_edit.neurons.artifact import LocateArtifact

    _, path = located("llama")
    artifact = LocateArtifact.load(path)
    low = [lang for lang in artifact.languages if lang != artifact.reference_lang]
    layer = artifact.recommended_layer or 0
    union = set(edit_neurons(artifact, layer, "low-union", artifact.reference_lang, low, None).tolist())
    reference = set(artifact.neuron_set(artifact.reference_lang, layer).tolist())
    only = edit_neurons(artifact, layer, "low-only", artifact.reference_lang, low, None)
    assert union & reference and union - reference, "the fixture must have shared and low-only neurons"
    assert set(only.tolist()) == union - reference
    assert only.tolist() == sorted(only.tolist())
    capped = edit_neurons(artifact, layer, "low-only", artifact.reference_lang, low, 2)
    assert len(capped) == min(2, len(only)) and set(capped.tolist()) <= set(only.tolist())


def test_harmless_limit_sizes_the_null_space_anchors_apart_from_limit(located, tmp_path):
    _, artifact = located("llama")
    manifest = json.loads(
        run_cli(*apply_args(artifact, tmp_path / "out", "--limit", "4", "--harmless-limit", "10"), "--json").stdout
    )
    anchors = manifest["anchors"]
    # 3 languages: 4 harmful prompts each (2 low-resource languages), all 10 harmless prompts each.
    assert anchors["low_train"] + anchors["low_dev"] == 8
    assert anchors["ref_train"] + anchors["ref_dev"] == 4
    assert anchors["safe_train"] + anchors["safe_dev"] == 30
    assert manifest["settings"]["harmless_limit"] == 10


def test_dev_harmless_limit_caps_the_harmless_dev_prompts_apart_from_dev_limit(located, tmp_path):
    _, artifact = located("llama")

    def anchors(out: str, *extra: str) -> dict[str, int]:
        args = apply_args(artifact, tmp_path / out, "--limit", "4", "--harmless-limit", "10")
        manifest = json.loads(run_cli(*args, "--dev-fraction", "0.5", "--dev-limit", "1", *extra, "--json").stdout)
        return manifest["anchors"]

    shared, apart = anchors("shared"), anchors("apart", "--dev-harmless-limit", "3")
    assert shared["safe_dev"] <= 3 < apart["safe_dev"] <= 9  # 3 languages
    assert apart["low_dev"] == shared["low_dev"] and apart["ref_dev"] == shared["ref_dev"]
    assert apart["safe_train"] == shared["safe_train"]  # a dev cap leaves prompts out, it never trains on them


def test_dev_generate_ranks_candidates_by_judged_replies(located, tmp_path):
    _, artifact = located("llama", layers=4)
    manifest = json.loads(
        run_cli(
            *apply_args(
                artifact, tmp_path / "out", "--layer", "auto", "--candidate-layers", "1,2", "--dev-generate", "2"
            ),
            "--json",
        ).stdout
    )
    table = manifest["candidates"]
    for row in table:
        for role in ("harmful", "harmless"):
            assert -1.0 <= row[f"refusal_rate_gain_{role}"] <= 1.0
            assert set(row[f"refusal_rate_gain_{role}_by_lang"]) <= {"en", "th", "yo"}
        gap = row["refusal_rate_gain_harmful"] - row["refusal_rate_gain_harmless"]
        assert row["generated_selective_gain"] == pytest.approx(gap)
    best = max(table, key=lambda r: (r["generated_selective_gain"], r["selective_gain"]))
    assert manifest["layers"] == best["layers"]
    assert "--dev-generate" in manifest["selection_rule"]


def test_choice_prefers_judged_replies_over_first_token_log_odds():
    from sparse_edit.console import Reporter
    from sparse_edit.edit.candidates import Candidate
    from sparse_edit.edit.dev_choice import choose

    log_odds_favourite = Candidate("output", (1,), diagnostics={"selective_gain": 2.0, "kl_harmless": 0.01})
    log_odds_favourite.diagnostics["generated_selective_gain"] = 0.1
    replies_favourite = Candidate("output", (2,), diagnostics={"selective_gain": 0.5, "kl_harmless": 0.01})
    replies_favourite.diagnostics["generated_selective_gain"] = 0.3
    over_budget = Candidate("output", (3,), diagnostics={"selective_gain": 9.0, "kl_harmless": 1.0})
    over_budget.diagnostics["generated_selective_gain"] = 0.9
    chosen = choose([log_odds_favourite, replies_favourite, over_budget], 0.05, Reporter(quiet=True))
    assert chosen is replies_favourite


def test_refusal_rates_judge_generated_replies_per_language(monkeypatch):
    from sparse_edit.console import Reporter
    from sparse_edit.data.prompts import Prompt
    from sparse_edit.measure import probes
    from sparse_edit.model.batching import Encoded

    replies = ["I'm sorry, but I can't help with that.", "Sure, here is a poem.", "Sure thing."]
    monkeypatch.setattr(probes, "generate_replies", lambda *args, **kwargs: replies)
    items = [
        Encoded(Prompt(str(i), lang, "write a poem", "harmless"), (1, 2, 3), False)
        for i, lang in enumerate(("en", "en", "th"))
    ]
    rates = probes.refusal_rates(None, items, 8, 2, Reporter(quiet=True))  # type: ignore[arg-type]
    assert rates == {"en": 0.5, "th": 0.0}


def test_apply_without_strategy_flags_uses_the_tuned_defaults(located, tmp_path):
    """No strategy flags: the paper edit at three quarters of the depth, with the tuned harmless weight."""
    _, artifact = located("llama", layers=4)
    out = tmp_path / "edited"
    manifest = json.loads(
        run_cli("apply", "--artifact", artifact, "-o", out, "--device", "cpu", "-q", "--json").stdout
    )
    assert manifest["strategy"] == "paper" and manifest["layers"] == [3]  # round(0.75 * 4 layers)
    assert manifest["settings"]["gamma"] == 0.15 and manifest["settings"]["proj"] == "gate"
    assert {e["projection"] for e in manifest["edits"]} == {"gate"}
