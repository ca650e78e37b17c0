"""Flags override the config file, in both directions for boolean settings."""

from __future__ import annotations

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

    def capture(options, reporter, config=None):
        seen.append(options)
        raise SparseEditError("stop")

    monkeypatch.setattr(sparse_edit.edit.run, "run_apply", capture)
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
