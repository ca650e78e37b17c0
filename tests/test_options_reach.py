"""Each apply stage receives what it reads: the options object enters few rooms (modules), and never climbs
back into one it came through (counted as ``benchmarks/options_reach.py`` says)."""

from __future__ import annotations

import pytest

import sparse_edit as se
from tests.helpers import options_reach


@pytest.mark.parametrize("strategy", ["paper", "detector"])
def test_apply_options_reach_few_rooms_and_never_climb_back(located, tmp_path, strategy):
    _, artifact = located("llama")
    options = se.apply_options(
        artifact=artifact, output=tmp_path / "edited", strategy=[strategy], layer="1", device="cpu", dev_generate=2
    )
    reach = options_reach(lambda: se.apply_edit(options=options), options)
    assert (tmp_path / "edited" / "sparse_edit" / "manifest.json").is_file()  # the traced run did the whole apply
    assert "sparse_edit.edit.run" in reach["rooms"]  # the trace sees the stages
    # Strategies, model loading and prompt selection get their own part of the options, not the object.
    assert not [room for room in reach["rooms"] if room.startswith("sparse_edit.edit.strategies")]
    assert "sparse_edit.model.loading" not in reach["rooms"] and "sparse_edit.data.selection" not in reach["rooms"]
    assert reach["rooms_entered"] <= 12 and reach["climbs_back_up"] <= 5, reach


def test_the_reach_counter_counts_a_package_function_given_the_whole_object():
    from sparse_edit.io.inputs import command_inputs
    from sparse_edit.options import ApplyOptions

    options = ApplyOptions(model="m", harmful=["h"], harmless=["s"], artifact="a", output="o")
    reach = options_reach(lambda: command_inputs(options), options)
    assert reach["rooms"] == ["sparse_edit.io.inputs"] and reach["rooms_entered"] == 1
    # A copy of a part of it (what a stage should get) is another object: not followed.
    assert options_reach(lambda: command_inputs(options.model_copy()), options)["rooms"] == []
