"""Flags override the config file, in both directions for boolean settings."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import sparse_edit.edit.run
import sparse_edit.neurons.artifact
from sparse_edit.cli import app
from sparse_edit.errors import SparseEditError


def _apply_options(monkeypatch, tmp_path, *flags: str):
    """Parse ``apply`` flags over a config that turns both booleans on; stop before any model is loaded."""
    config = tmp_path / "apply.toml"
    config.write_text(
        'artifact = "missing.safetensors"\nmodel = "m"\nharmful = ["h.jsonl"]\nharmless = ["s.jsonl"]\n'
        f'output = "{tmp_path / "out"}"\nceiling = true\noverwrite = true\n'
    )
    seen = []

    def capture(options, checked, reporter):
        seen.append(options)
        raise SparseEditError("stop")

    monkeypatch.setattr(sparse_edit.edit.run, "solve_edit", capture)
    monkeypatch.setattr(
        sparse_edit.neurons.artifact, "read_artifact_metadata", lambda path, flag: {"settings": {}}
    )
    result = CliRunner().invoke(app, ["apply", "-c", str(config), *flags])
    assert result.exit_code == 2, result.output
    return seen[0]


def test_config_booleans_hold_without_flags(monkeypatch, tmp_path):
    options = _apply_options(monkeypatch, tmp_path)
    assert options.ceiling is True and options.overwrite is True


def test_negative_flags_override_a_config_true(monkeypatch, tmp_path):
    options = _apply_options(monkeypatch, tmp_path, "--no-ceiling", "--no-overwrite")
    assert options.ceiling is False and options.overwrite is False


def test_several_paths_may_follow_one_list_flag(monkeypatch, tmp_path):
    options = _apply_options(
        monkeypatch, tmp_path, "--harmful", "a.jsonl", "b.json:th", "--languages", "en", "th", "--no-ceiling"
    )
    assert options.harmful == ["a.jsonl", "b.json:th"] and options.languages == ["en", "th"]
    assert options.ceiling is False


def test_spreading_stops_at_the_next_flag_and_leaves_single_value_flags_alone():
    from sparse_edit.cli_flags import spread_multi_values

    assert spread_multi_values(["eval", "--harmful", "a", "b", "-o", "out", "--fail-if", "x > 1", "y < 2"]) == [
        "eval",
        "--harmful",
        "a",
        "--harmful",
        "b",
        "-o",
        "out",
        "--fail-if",
        "x > 1",
        "--fail-if",
        "y < 2",
    ]
    assert spread_multi_values(["verify", "base", "edited"]) == ["verify", "base", "edited"]


def test_layer_as_a_depth_fraction(monkeypatch, tmp_path):
    assert _apply_options(monkeypatch, tmp_path).fixed_layers(24) == (18,)  # the default, 0.75
    options = _apply_options(monkeypatch, tmp_path, "--layer", "0.5")
    assert options.fixed_layers(24) == (12,) and options.fixed_layers(3) == (2,)
    assert _apply_options(monkeypatch, tmp_path, "--layer", "0.99").fixed_layers(4) == (3,)  # never past the last
    assert _apply_options(monkeypatch, tmp_path, "--layer", "5,7").fixed_layers(24) == (5, 7)


def test_a_depth_outside_the_model_or_a_mixed_list_is_refused(tmp_path):
    from pydantic import ValidationError

    from sparse_edit.options import ApplyOptions

    required = {"artifact": "a.safetensors", "output": tmp_path, "model": "m", "harmful": ["h"], "harmless": ["s"]}
    for bad in ("1.5", "0.0", "0.5,7", "-0.5", "x"):
        with pytest.raises(ValidationError, match="depth fraction"):
            ApplyOptions.model_validate({**required, "layer": bad})


def test_candidate_layers_imply_auto_unless_a_layer_is_named(monkeypatch, tmp_path):
    assert _apply_options(monkeypatch, tmp_path, "--candidate-layers", "1", "2").fixed_layers(4) is None
    named = _apply_options(monkeypatch, tmp_path, "--candidate-layers", "1", "2", "--layer", "3")
    assert named.fixed_layers(4) == (3,)


def test_gates_in_tune_fix_how_they_are_written_but_leave_the_searched_settings_alone(tmp_path):
    from sparse_edit.options.apply import ApplyOptions
    from sparse_edit.options.tune import TuneOptions

    common = {
        "artifact": tmp_path / "a.safetensors",
        "model": "m",
        "harmful": ["h.jsonl"],
        "harmless": ["s.jsonl"],
        "output": tmp_path / "out",
        "detector_gate": [tmp_path / "g12.safetensors", tmp_path / "g20.safetensors"],
    }
    applied = ApplyOptions.model_validate(common)
    tuned = TuneOptions.model_validate(common)
    assert (applied.strategy, applied.layer, applied.gain) == (["detector"], "gates", 32.0)
    assert tuned.layer == "auto" and tuned.strategy != ["detector"] and tuned.gain != 32.0
    for options in (applied, tuned):
        assert (options.detector_response, options.detector_push_at) == ("step", "prompt-end")
