"""The strategy registry: every registered strategy is complete, documented, and a new one plugs in alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_edit.edit import strategies
from sparse_edit.edit.strategies.base import Strategy
from sparse_edit.errors import SparseEditError
from sparse_edit.options import ApplyOptions, load_options
from tests.helpers import apply_args, changed_rows, run_cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "method.md"


@pytest.mark.parametrize("name", strategies.BUILT_IN)
def test_every_registered_strategy_is_a_complete_documented_strategy(name):
    strategy = strategies.get(name)
    assert isinstance(strategy, Strategy) and strategy.name == name and strategy.summary
    options = ApplyOptions(model="m", harmful=["h"], harmless=["s"], artifact="a", output="o")
    needs = strategy.needs(strategy.settings_model.of(options))
    assert needs.sites and set(needs.sites) <= {"mlp_input", "neurons", "residual"}
    assert strategy.gram_site is None or strategy.gram_site in needs.sites
    assert issubclass(ApplyOptions, strategy.settings_model), "every strategy's settings are apply settings"
    assert strategy.table_row is not None, f"{name} has no row for the strategy table"


def test_the_docs_strategy_table_is_the_one_the_registry_writes():
    text = DOCS.read_text(encoding="utf-8")
    begin, end = "<!-- strategy table:", "<!-- end of strategy table -->"
    table = text[text.index("\n", text.index(begin)) + 1 : text.index(end)]
    assert table == strategies.markdown_table(strategies.BUILT_IN), (
        "docs/method.md's strategy table is stale: paste `sparse-edit strategies --markdown` between its markers"
    )


def test_the_strategies_command_lists_each_strategy_with_its_own_settings():
    listed = json.loads(run_cli("strategies", "--json").output)
    assert [entry["name"] for entry in listed] == list(strategies.BUILT_IN)
    detector = next(entry for entry in listed if entry["name"] == "detector")
    assert "--detector-gate" in detector["settings"] and "--gamma" not in detector["settings"]
    assert detector["summary"] == strategies.get("detector").summary


def test_a_strategy_reads_its_own_settings_off_the_apply_options():
    settings = {"model": "m", "harmful": ["h"], "harmless": ["s"], "artifact": "a", "output": "o"}
    options = load_options(ApplyOptions, None, {**settings, "gamma": 0.5, "gain": 3.0, "detector_margin": 2.0})
    paper = strategies.get("paper").settings_model.of(options)
    detector = strategies.get("detector").settings_model.of(options)
    assert paper.gamma == 0.5 and not hasattr(paper, "gain")
    assert (detector.gain, detector.detector_margin) == (3.0, 2.0) and not hasattr(detector, "gamma")
    # The flags and TOML keys stay flat: one per field, whichever strategy declares it.
    owned = [name for s in strategies.BUILT_IN for name in strategies.get(s).settings_model.model_fields]
    assert set(owned) <= set(ApplyOptions.model_fields)


def test_an_unregistered_strategy_is_refused_by_name():
    with pytest.raises(SparseEditError, match="unknown strategy 'lora'; registered: output, detector, paper"):
        settings = {"model": "m", "harmful": ["h"], "harmless": ["s"], "artifact": "a", "output": "o"}
        load_options(ApplyOptions, None, {**settings, "strategy": ["lora"]})


PLUG_IN = """
from typing import Any

import torch

from sparse_edit.edit.delta import SliceEdit
from sparse_edit.edit.strategies.base import FeatureNeeds, SolveJob, Strategy


class OneColumn(Strategy):
    \"\"\"Defined outside the package: adds a fixed rank-1 update to one down_proj column.\"\"\"

    name = "one_column"
    summary = "test only"
    gram_site = None

    def needs(self, options) -> FeatureNeeds:
        return FeatureNeeds(sites=("neurons",))

    def solve(self, job: SolveJob) -> tuple[list[SliceEdit], dict[str, Any]]:
        family, width = job.checkpoint.family, job.checkpoint.dims.mlp_width
        column = family.neuron_slice(job.layer, "down", width)
        hidden = job.checkpoint.dims.hidden_size
        edit = SliceEdit(
            job.layer, "down", column, torch.tensor([5]), torch.ones(1, 1), torch.full((1, hidden), 0.25)
        )
        return [edit], {"rank": 1, "jitter": 0.0, "nullspace_dim": None}


STRATEGY = OneColumn()
"""


def plug_in_package(root: Path) -> Path:
    """A package installed beside sparse-edit (a module and its dist-info on the path) registering a strategy
    through its entry point, as ``pip install`` of a package with that entry point would."""
    site = root / "site"
    (site / "one_column_strategy-0.1.dist-info").mkdir(parents=True)
    (site / "one_column_strategy.py").write_text(PLUG_IN)
    info = site / "one_column_strategy-0.1.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: one-column-strategy\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sparse_edit.strategies]\none_column = one_column_strategy:STRATEGY\n")
    return site


def test_a_strategy_from_another_package_registers_itself_and_runs_through_apply(located, tmp_path):
    model, artifact = located("llama")
    site = plug_in_package(tmp_path)
    out = tmp_path / "edited"
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(repo)])}
    command = [
        sys.executable,
        "-m",
        "sparse_edit",
        *map(str, apply_args(artifact, out, "--strategy", "one_column")),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    changed = changed_rows(model, out)
    assert list(changed) == ["model.layers.1.mlp.down_proj.weight"]
    assert changed["model.layers.1.mlp.down_proj.weight"].nonzero()[:, 1].unique().tolist() == [5]
    assert "ok" in run_cli("verify", model, out, "--skip-forward").output
    # Without the package the name is unknown: one line naming the registered ones.
    result = subprocess.run(command, env={**env, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown strategy 'one_column'" in result.stderr
