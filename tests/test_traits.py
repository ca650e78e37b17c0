"""Setting traits (``options/traits.py``): the lists of settings the code needs are derived from the fields."""

from __future__ import annotations

import pytest

from sparse_edit.cli_flags import given
from sparse_edit.options import ApplyOptions, EvalOptions, LocateOptions, TuneOptions
from sparse_edit.options.gates import GateOptions
from sparse_edit.options.roles import role_of
from sparse_edit.options.traits import COMMA_LIST, INHERITED, NOT_IN_STUDY_KEY, fields_with, short_flag

MODELS = (LocateOptions, ApplyOptions, TuneOptions, EvalOptions, GateOptions)


@pytest.mark.parametrize("model", [ApplyOptions, TuneOptions])
def test_every_inherited_setting_is_one_locate_records(model):
    inherited = fields_with(model, INHERITED)
    assert "model" in inherited and "harmful" in inherited
    assert inherited <= set(LocateOptions.model_fields)


@pytest.mark.parametrize("model", MODELS)
def test_comma_lists_never_hold_paths_and_every_output_has_its_short_flag(model):
    for name in fields_with(model, COMMA_LIST):
        role = role_of(model, name)
        assert role is None or role.kind == "text", f"{model.__name__}.{name}: a path may hold a comma"
    assert short_flag(model, "output") == "-o"


def test_the_command_line_splits_commas_only_in_comma_lists():
    settings = given(EvalOptions, {"languages": ["en,th", "yo"], "harmful": ["a,b.jsonl"], "limit": None})
    assert settings == {"languages": ["en", "th", "yo"], "harmful": ["a,b.jsonl"]}


def test_the_study_key_leaves_out_only_tune_settings_that_do_not_change_a_trial():
    left_out = fields_with(TuneOptions, NOT_IN_STUDY_KEY)
    assert {"trials", "storage", "output"} <= left_out
    # Anything that changes what a trial computes stays in the key.
    assert not left_out & {"model", "harmful", "harmless", "strategy", "max_new_tokens", "candidate_layers"}
