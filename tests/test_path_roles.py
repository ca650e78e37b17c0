"""Every path a run reads survives every output, --overwrite and store: the roles declared on the options
fields (read, written, read-written) decide it, and these tests walk every field."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from sparse_edit.errors import SparseEditError
from sparse_edit.io.destination import check_output
from sparse_edit.io.inputs import command_inputs
from sparse_edit.options import ApplyOptions, EvalOptions, LocateOptions, Options, TuneOptions, load_options
from sparse_edit.options.gates import GateOptions
from sparse_edit.options.roles import flag_of, role_of

COMMANDS: dict[str, type[Options]] = {
    "locate": LocateOptions,
    "apply": ApplyOptions,
    "eval": EvalOptions,
    "tune": TuneOptions,
    "gates": GateOptions,
}


def _may_hold_a_path(annotation: object) -> bool:
    """A field typed str or Path (alone, optional or in a list); Literal choices and numbers cannot."""
    if annotation in (str, Path):
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return False
    return any(_may_hold_a_path(arg) for arg in typing.get_args(annotation))


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_text_or_path_field_declares_its_role(command):
    model = COMMANDS[command]
    undecided = [
        name
        for name, field in model.model_fields.items()
        if _may_hold_a_path(field.annotation) and role_of(model, name) is None
    ]
    assert undecided == [], f"{command}: declare read, written, read-written or text on {undecided}"


def _options(command: str, root: Path, **changes: object) -> Options:
    """Valid options of ``command`` whose every path lies under ``root``/inputs (files made as needed)."""
    inputs = root / "inputs"
    inputs.mkdir(exist_ok=True)
    for name in ("harmful.jsonl", "harmless.jsonl", "dev.jsonl"):
        (inputs / name).write_text('{"id": "1", "lang": "en", "text": "x"}\n')
    values: dict[str, object] = {
        "model": inputs / "model",
        "harmful": [str(inputs / "harmful.jsonl")],
        "harmless": [str(inputs / "harmless.jsonl")],
        "output": root / ("out.safetensors" if command == "locate" else "out"),
    }
    if command in ("apply", "tune"):
        values.update(artifact=inputs / "art.safetensors", dev_harmless=[str(inputs / "dev.jsonl")])
    if command == "gates":
        values.update(
            test_harmful=[str(inputs / "harmful.jsonl")],
            test_harmless=[str(inputs / "harmless.jsonl")],
            features=inputs / "features.safetensors",
            test_features=inputs / "test.safetensors",
        )
    if command == "eval":
        values.update(base=inputs / "base", judge=str(inputs / "guard"), artifact=inputs / "art.safetensors")
    values.update(changes)
    return COMMANDS[command].model_validate(values)


def _read_fields(command: str) -> list[str]:
    model = COMMANDS[command]
    return [
        name
        for name in model.model_fields
        if (role := role_of(model, name)) and role.kind in ("read", "read-written")
    ]


@pytest.mark.parametrize(
    ("command", "field"), [(command, field) for command in sorted(COMMANDS) for field in _read_fields(command)]
)
def test_no_output_may_contain_a_path_the_run_reads(tmp_path, command, field):
    """Point ``field`` into the output folder: the destination check names the field's flag."""
    options = _options(command, tmp_path)
    inside = tmp_path / "dest" / "inside.jsonl"
    inside.parent.mkdir()
    inside.write_text('{"id": "1", "lang": "en", "text": "x"}\n')
    takes_a_list = "list" in str(COMMANDS[command].model_fields[field].annotation)
    value = [str(inside)] if takes_a_list else str(inside)
    options = _options(command, tmp_path, **{field: value})
    (tmp_path / "dest" / ".sparse-edit-output.json").write_text(f'{{"command": "{command}"}}\n')
    with pytest.raises(SparseEditError, match=f"contains the input {flag_of(field)}"):
        check_output(tmp_path / "dest", command, command_inputs(options), overwrite=True)


STORES = [("tune", "storage"), ("eval", "base_cache")]


@pytest.mark.parametrize(("command", "store"), STORES)
@pytest.mark.parametrize("where", ["is", "inside", "contains"])
def test_a_store_is_never_an_input_inside_one_or_around_one(tmp_path, command, store, where):
    inputs = tmp_path / "inputs"
    options = _options(command, tmp_path)
    path = {"is": inputs / "harmful.jsonl", "inside": inputs / "model" / "x.db", "contains": inputs}[where]
    with pytest.raises(
        SparseEditError, match=f"^{flag_of(store)} .*(is the input|lies inside|contains the input)"
    ):
        command_inputs(_options(command, tmp_path, **{store: str(path)}))
    command_inputs(options)  # the same options without the store are fine


def test_a_sqlite_url_names_its_file_as_the_store(tmp_path):
    options = _options("tune", tmp_path, storage=f"sqlite:///{tmp_path / 'inputs' / 'model' / 'study.db'}")
    with pytest.raises(SparseEditError, match="--storage .* lies inside the input --model"):
        command_inputs(options)
    server = _options("tune", tmp_path, storage="postgresql://user@host/db")
    assert ("--storage", Path("postgresql://user@host/db")) not in command_inputs(server)


def test_tune_and_eval_name_the_reply_length_alike_and_the_former_tune_name_still_works():
    assert "max_new_tokens" in TuneOptions.model_fields and "max_new_tokens" in EvalOptions.model_fields
    base = {"artifact": "a.safetensors", "model": "m", "harmful": ["h"], "harmless": ["s"], "output": "o"}
    assert load_options(TuneOptions, None, {**base, "reply_tokens": 7}).max_new_tokens == 7
    assert load_options(TuneOptions, None, {**base, "max_new_tokens": 9}).max_new_tokens == 9
