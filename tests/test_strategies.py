"""The strategy registry: every registered strategy is complete, documented, and a new one plugs in alone."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from sparse_edit import strategy_names
from sparse_edit.edit import strategies
from sparse_edit.edit.delta import SliceEdit
from sparse_edit.edit.strategies.base import FeatureNeeds, SolveJob, Strategy
from sparse_edit.errors import SparseEditError
from sparse_edit.options import ApplyOptions, load_options
from tests.helpers import apply_args, changed_rows, run_cli

DOCS = Path(__file__).resolve().parents[1] / "docs" / "method.md"


@pytest.mark.parametrize("name", strategies.NAMES)
def test_every_registered_strategy_is_a_complete_documented_strategy(name):
    strategy = strategies.get(name)
    assert isinstance(strategy, Strategy) and strategy.name == name and strategy.summary
    options = ApplyOptions(model="m", harmful=["h"], harmless=["s"], artifact="a", output="o")
    needs = strategy.needs(options)
    assert needs.sites and set(needs.sites) <= {"mlp_input", "neurons", "residual"}
    assert strategy.gram_site is None or strategy.gram_site in needs.sites
    assert issubclass(ApplyOptions, strategy.settings_model), "every strategy's settings are apply settings"
    assert f"| `{name}` |" in DOCS.read_text(encoding="utf-8"), f"docs/method.md has no row for {name}"


def test_a_strategy_reads_its_own_settings_off_the_apply_options():
    settings = {"model": "m", "harmful": ["h"], "harmless": ["s"], "artifact": "a", "output": "o"}
    options = load_options(ApplyOptions, None, {**settings, "gamma": 0.5, "gain": 3.0, "detector_margin": 2.0})
    paper = strategies.get("paper").settings_model.of(options)
    detector = strategies.get("detector").settings_model.of(options)
    assert paper.gamma == 0.5 and not hasattr(paper, "gain")
    assert (detector.gain, detector.detector_margin) == (3.0, 2.0) and not hasattr(detector, "gamma")
    # The flags and TOML keys stay flat: one per field, whichever strategy declares it.
    owned = [name for s in strategies.NAMES for name in strategies.get(s).settings_model.model_fields]
    assert set(owned) <= set(ApplyOptions.model_fields)


def test_an_unregistered_strategy_is_refused_by_name():
    with pytest.raises(SparseEditError, match="unknown strategy 'lora'; registered: output, detector, paper"):
        settings = {"model": "m", "harmful": ["h"], "harmless": ["s"], "artifact": "a", "output": "o"}
        load_options(ApplyOptions, None, {**settings, "strategy": ["lora"]})


class OneColumn(Strategy):
    """A strategy defined outside the package: adds a fixed rank-1 update to one down_proj column."""

    name = "one_column"
    summary = "test only"
    gram_site = None

    def needs(self, options: ApplyOptions) -> FeatureNeeds:
        return FeatureNeeds(sites=("neurons",))

    def solve(self, job: SolveJob) -> tuple[list[SliceEdit], dict[str, Any]]:
        family, width = job.checkpoint.family, job.checkpoint.dims.mlp_width
        column = family.neuron_slice(job.layer, "down", width)
        hidden = job.checkpoint.dims.hidden_size
        edit = SliceEdit(
            job.layer, "down", column, torch.tensor([5]), torch.ones(1, 1), torch.full((1, hidden), 0.25)
        )
        return [edit], {"rank": 1, "jitter": 0.0, "nullspace_dim": None}


def test_a_new_strategy_is_one_module_and_its_name(located, tmp_path, monkeypatch):
    module = types.ModuleType("sparse_edit.edit.strategies.one_column")
    module.STRATEGY = OneColumn()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(strategy_names, "NAMES", (*strategy_names.NAMES, "one_column"))
    strategies.get.cache_clear()
    model, artifact = located("llama")
    out = tmp_path / "edited"
    run_cli(*apply_args(artifact, out, "--strategy", "one_column"))
    changed = changed_rows(model, out)
    assert list(changed) == ["model.layers.1.mlp.down_proj.weight"]
    assert changed["model.layers.1.mlp.down_proj.weight"].nonzero()[:, 1].unique().tolist() == [5]
    assert "ok" in run_cli("verify", model, out, "--skip-forward").output
    strategies.get.cache_clear()
