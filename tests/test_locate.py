from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from sparse_edit.cli import app
from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.model.batching import encode_prompts, make_batch
from sparse_edit.model.hooks import capture, pool, run_base
from sparse_edit.model.loading import load_model
from sparse_edit.neurons.artifact import LocateArtifact
from sparse_edit.neurons.locate import run_locate
from sparse_edit.options import LocateOptions
from sparse_edit.testing import TINY_FAMILIES
from tests.helpers import PLANTED, parallel_prompt_files, planted_llama, planted_prompts

runner = CliRunner()


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_out_projection_of_captured_activation_is_the_mlp_output(tiny_models, model_type):
    loaded = load_model(
        LocateOptions.model_construct(model=tiny_models(model_type), device="cpu", dtype="float32")
    )
    family, model = loaded.family, loaded.model
    captured: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}
    hooks = [
        family.mlp(model, layer).register_forward_hook(
            lambda m, a, out, layer=layer: outputs.__setitem__(layer, out)
        )
        for layer in range(loaded.num_layers)
    ]
    with capture(family, model, range(loaded.num_layers), "neurons", captured.__setitem__), torch.no_grad():
        run_base(model, {"input_ids": torch.arange(12).unsqueeze(0)})
    for hook in hooks:
        hook.remove()
    for layer in range(loaded.num_layers):
        out_proj = family.out_proj(model, layer)
        torch.testing.assert_close(out_proj(captured[layer]), outputs[layer])


def test_last_pooling_with_left_padding_matches_unpadded(tiny_models):
    loaded = load_model(LocateOptions.model_construct(model=tiny_models("qwen2"), device="cpu", dtype="float32"))
    prompts = [
        Prompt("0", "en", "short", "harmful"),
        Prompt("1", "en", "a much longer prompt than that", "harmful"),
    ]
    encoded = encode_prompts(loaded.tokenizer, prompts)
    pad = loaded.tokenizer.pad_token_id

    def pooled(items):
        batch = make_batch(items, pad)
        got = {}
        sink = lambda layer, act: got.__setitem__(layer, pool(act, batch.attention_mask, "last"))  # noqa: E731
        with capture(loaded.family, loaded.model, [1], "neurons", sink), torch.no_grad():
            run_base(loaded.model, batch.model_inputs(torch.device("cpu")))
        return got[1]

    together = pooled(encoded)
    assert make_batch(encoded, pad).attention_mask[0].sum() < make_batch(encoded, pad).attention_mask.shape[1]
    torch.testing.assert_close(together[0], pooled([encoded[0]])[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[1], pooled([encoded[1]])[0], atol=1e-5, rtol=1e-5)


def _options(model, harmful, harmless, output, **extra) -> LocateOptions:
    return LocateOptions(
        model=model, harmful=[str(harmful)], harmless=[str(harmless)], output=output, device="cpu", **extra
    )


def test_statistics_do_not_depend_on_batch_size(tiny_models, tmp_path):
    harmful, harmless = parallel_prompt_files(tmp_path)
    model = tiny_models("llama")
    one = run_locate(
        _options(model, harmful, harmless, tmp_path / "a.safetensors", batch_size=1), Reporter(quiet=True)
    )
    eight = run_locate(
        _options(model, harmful, harmless, tmp_path / "b.safetensors", batch_size=8), Reporter(quiet=True)
    )
    for lang in one.languages:
        for label in ("harmful", "harmless"):
            torch.testing.assert_close(
                one.stats[lang][label].mean, eight.stats[lang][label].mean, atol=1e-6, rtol=0
            )
            torch.testing.assert_close(
                one.stats[lang][label].var, eight.stats[lang][label].var, atol=1e-6, rtol=1e-5
            )


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_planted_neurons_are_found_exactly(tiny_models, tmp_path, pooling):
    model = planted_llama(tmp_path / "planted", tiny_models)
    harmful, harmless = planted_prompts(tmp_path)
    artifact = run_locate(
        _options(model, harmful, harmless, tmp_path / "a.safetensors", pooling=pooling), Reporter(quiet=True)
    )
    for lang in ("en", "th"):
        assert artifact.neuron_set(lang, 0).tolist() == PLANTED
    assert artifact.jaccard_to_reference() == {"th": [1.0]}


def test_artifact_round_trip_and_inspect(tiny_models, tmp_path):
    harmful, harmless = parallel_prompt_files(tmp_path)
    artifact = run_locate(
        _options(tiny_models("gpt2"), harmful, harmless, tmp_path / "x.safetensors"), Reporter(quiet=True)
    )
    path = tmp_path / "artifact.safetensors"
    artifact.save(path)
    again = LocateArtifact.load(path)
    assert again.to_bytes() == artifact.to_bytes()
    assert again.summary() == artifact.summary()
    for lang in artifact.languages:
        for layer in range(artifact.num_layers):
            assert torch.equal(again.neuron_set(lang, layer), artifact.neuron_set(lang, layer))
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["languages"] == artifact.languages


def test_locate_cli_writes_artifact_and_reports_layers(tiny_models, tmp_path):
    harmful, harmless = parallel_prompt_files(tmp_path)
    config = tmp_path / "run.toml"
    config.write_text(
        f'model = "{tiny_models("qwen2")}"\nharmful = ["{harmful}"]\nharmless = ["{harmless}"]\ndevice = "cpu"\n'
    )
    out = tmp_path / "out.safetensors"
    result = runner.invoke(
        app, ["locate", "--config", str(config), "--languages", "en,th", "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["languages"] == ["en", "th"] and len(summary["neurons_per_layer"]["en"]) == 2
    again = runner.invoke(app, ["locate", "--config", str(config), "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pooling", "median"], "pooling"),
        (["--languages", "en,xx"], "xx has no harmful prompts"),
        (["--tau-mag", "-1"], "tau_mag"),
        (["--device", "tpu"], "device"),
    ],
)
def test_locate_bad_flags_fail_cleanly(tiny_models, tmp_path, args, message):
    harmful, harmless = parallel_prompt_files(tmp_path)
    out = tmp_path / "out.safetensors"
    base = ["locate", "--model", str(tiny_models("llama")), "--harmful", str(harmful), "--harmless", str(harmless)]
    result = runner.invoke(app, [*base, "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and result.stderr.strip().count("\n") == 0
    assert not out.exists()


def test_config_unknown_key_is_named(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text(
        'model = "m"\nharmful = ["a"]\nharmless = ["b"]\noutput = "o.safetensors"\npoolng = "last"\n'
    )
    result = runner.invoke(app, ["locate", "--config", str(config)])
    assert result.exit_code == 2
    assert "unknown setting 'poolng'" in result.stderr


def test_artifact_for_another_model_is_refused(tiny_models, tmp_path):
    harmful, harmless = parallel_prompt_files(tmp_path)
    artifact = run_locate(
        _options(tiny_models("llama"), harmful, harmless, tmp_path / "a.safetensors"), Reporter(quiet=True)
    )
    from sparse_edit.errors import SparseEditError
    from sparse_edit.io.checkpoint import Checkpoint

    with pytest.raises(SparseEditError, match="run locate on this model"):
        artifact.check_model(Checkpoint.open(tiny_models("llama", layers=3)), "--artifact")


def test_out_of_memory_becomes_a_batch_size_hint():
    from sparse_edit.errors import SparseEditError
    from sparse_edit.model.batching import batch_memory_guard

    with pytest.raises(SparseEditError, match="try --batch-size 4"), batch_memory_guard(8):
        raise torch.OutOfMemoryError("simulated")
