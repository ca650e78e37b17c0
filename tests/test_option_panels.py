"""Each strategy's settings: their own --help panel, and their own TOML table beside the flat keys."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from sparse_edit.cli import app
from sparse_edit.errors import SparseEditError
from sparse_edit.options import ApplyOptions, TuneOptions, load_options

REQUIRED = {"artifact": "a.safetensors", "output": "out", "model": "m", "harmful": ["h"], "harmless": ["s"]}


def panels(help_text: str) -> dict[str, str]:
    """The text of each rich help panel, by its title."""
    found: dict[str, str] = {}
    title = None
    for line in help_text.splitlines():
        if line.startswith("╭─ "):
            title = line.removeprefix("╭─ ").split(" ─")[0].strip()
            found[title] = ""
        elif title is not None:
            found[title] += line + "\n"
    return found


def test_apply_help_groups_each_strategys_settings_in_its_panel():
    result = CliRunner().invoke(app, ["apply", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    found = panels(result.output)
    assert (
        "--detector-margin" in found["detector strategy"] and "--detector-response" in found["detector strategy"]
    )
    assert "--output-gamma" in found["output strategy"] and "--gamma " in found["paper strategy"]
    assert "--model " in found["model"] and "--harmful " in found["prompts"]
    assert "--detector-margin" not in found["Options"]  # the command's own settings stay apart


@pytest.mark.parametrize("model", [ApplyOptions, TuneOptions])
def test_a_strategy_table_sets_that_strategys_settings(tmp_path, model):
    config = tmp_path / "apply.toml"
    config.write_text('strategy = ["detector"]\n[detector]\ndetector_margin = 2.5\ndetector_response = "step"\n')
    options = load_options(model, config, REQUIRED)
    assert options.detector_margin == 2.5 and options.detector_response == "step"
    flat = tmp_path / "flat.toml"
    flat.write_text('strategy = ["detector"]\ndetector_margin = 2.5\ndetector_response = "step"\n')
    assert load_options(model, flat, REQUIRED) == options


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("[detector]\ngamma = 0.1\n", "[detector] gamma: not a detector setting"),
        ("detector_margin = 1.0\n[detector]\ndetector_margin = 2.0\n", "detector_margin is set twice"),
        ("[output]\ngain = 2.0\n[detector]\ngain = 4.0\n", "gain is set twice"),
    ],
)
def test_a_strategy_table_holding_another_setting_or_a_second_value_is_one_line(tmp_path, text, mentions):
    config = tmp_path / "apply.toml"
    config.write_text(text)
    with pytest.raises(SparseEditError, match=re.escape(mentions)) as caught:
        load_options(ApplyOptions, config, REQUIRED)
    assert "\n" not in str(caught.value) and str(config) in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "mentions"),
    [
        ({"detector_mode": "release", "detector_neurons": "per-language"}, "--detector-neurons per-language"),
        ({"detector_mode": "release", "detector_reference": "quiet"}, "--detector-reference quiet"),
    ],
)
def test_strategy_settings_that_cannot_go_together_fail_with_the_settings(settings, mentions):
    with pytest.raises(SparseEditError, match=f"{mentions} works in --detector-mode refuse only"):
        load_options(ApplyOptions, None, {**REQUIRED, **settings})
