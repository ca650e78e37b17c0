"""Bad inputs and faults, run through the real command line as a subprocess.

Every case asserts the README's promise: the documented exit code, exactly one ``error:`` (or
``failed:``) line naming the path or flag, no traceback, every input byte-identical afterwards,
and no output or staging left behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparse_edit.io.destination import OUTPUT_MARKER
from sparse_edit.io.layout import MANIFEST_FILE
from sparse_edit.io.staging import STAGING_MARKER
from tests.helpers import apply_args, dead_pid, locate_and_apply, refused, run_cli, write_jsonl


@pytest.fixture(scope="module")
def pristine(tiny_models, tmp_path_factory) -> Path:
    """A base model, prompts, a locate artifact and an edited folder, made once."""
    root = tmp_path_factory.mktemp("pristine")
    shutil.copytree(tiny_models("llama"), root / "base")
    locate_and_apply(root)
    return root


@pytest.fixture
def ws(pristine, tmp_path) -> Path:
    """A private copy of the pristine workspace; the working directory of every command."""
    root = tmp_path / "ws"
    shutil.copytree(pristine, root)
    return root


PROMPTS = ("--harmful", "harmful.jsonl", "--harmless", "harmless.jsonl")
LOCATE = ("locate", *PROMPTS, "--device", "cpu", "-q")


# ---- 1. an output never is, contains or sits inside an input -------------------------------


def test_apply_into_a_folder_that_contains_the_model_is_refused(ws):
    out = ws / "runs"
    (out).mkdir()
    shutil.move(ws / "base", out / "base")
    refused(
        ws,
        *apply_args(Path("art.safetensors"), out, "--model", "runs/base", "--overwrite"),
        mentions=("contains the input --model",),
    )


def test_revert_into_a_folder_that_contains_the_edited_model_is_refused(ws):
    refused(ws, "revert", "edited", "-o", ".", "--overwrite", mentions=("contains the input EDITED",))


def test_locate_over_a_folder_holding_its_prompts_is_refused(ws):
    folder = ws / "data.safetensors"
    folder.mkdir()
    shutil.move(ws / "harmful.jsonl", folder / "harmful.jsonl")
    refused(
        ws,
        "locate",
        "--model",
        "base",
        "--harmful",
        "data.safetensors/harmful.jsonl",
        "--harmless",
        "harmless.jsonl",
        "-o",
        "data.safetensors",
        "--overwrite",
        mentions=("contains the input --harmful",),
    )


def test_eval_around_the_model_or_its_config_is_refused(ws):
    config = ws / "cfg" / "eval.toml"
    config.parent.mkdir()
    config.write_text('model = "base"\nharmful = ["harmful.jsonl"]\nharmless = ["harmless.jsonl"]\n')
    refused(ws, "eval", "-c", config, "-o", "cfg", "--overwrite", mentions=("contains the input --config",))
    refused(ws, "eval", "-c", config, "-o", "base/report", mentions=("inside the input --model",))


def test_overwrite_never_replaces_what_another_command_or_a_user_wrote(ws):
    (ws / "mine").mkdir()
    (ws / "mine" / "notes.txt").write_text("keep me")
    refused(ws, *apply_args(Path("art.safetensors"), Path("mine"), "--overwrite"), mentions=("not written by",))
    # An edited folder is apply's output, not revert's.
    shutil.copytree(ws / "edited", ws / "edited-copy")
    refused(
        ws, "revert", "edited", "-o", "edited-copy", "--overwrite", mentions=("not written by sparse-edit revert",)
    )


# ---- 2. a model's own code never runs -------------------------------------------------------


def test_a_model_folder_with_auto_map_is_refused(ws):
    config = json.loads((ws / "base" / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (ws / "base" / "config.json").write_text(json.dumps(config))
    (ws / "base" / "modeling_evil.py").write_text("open('PWNED', 'w').write('ran')\n")
    refused(ws, *LOCATE, "--model", "base", "-o", "a.safetensors", mentions=("auto_map", "modeling_evil"))
    assert not (ws / "PWNED").exists()


# ---- 3. a broken checkpoint is refused before any work -------------------------------------


def _resave(folder: Path, change) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_a_missing_tensor_is_named(ws):
    _resave(ws / "base", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    refused(ws, *LOCATE, "--model", "base", "-o", "a.safetensors", mentions=("model.layers.1.mlp.up_proj.weight",))


def test_a_non_finite_weight_is_named(ws):
    def poison(tensors):
        tensors["model.layers.0.mlp.down_proj.weight"][3, 5] = float("nan")

    _resave(ws / "base", poison)
    refused(
        ws,
        *LOCATE,
        "--model",
        "base",
        "-o",
        "a.safetensors",
        mentions=("model.layers.0.mlp.down_proj.weight", "NaN"),
    )


def test_config_sizes_that_disagree_with_the_weights_are_named(ws):
    config = json.loads((ws / "base" / "config.json").read_text())
    config["intermediate_size"] = 80
    (ws / "base" / "config.json").write_text(json.dumps(config))
    refused(ws, *LOCATE, "--model", "base", "-o", "a.safetensors", mentions=("mlp", "config.json implies"))


def test_a_shard_the_index_never_references_is_named(ws, tiny_models):
    shutil.copytree(tiny_models("llama", max_shard_size="20KB"), ws / "sharded")
    index_path = ws / "sharded" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    dropped = sorted(set(index["weight_map"].values()))[-1]
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != dropped}
    index_path.write_text(json.dumps(index))
    refused(ws, *LOCATE, "--model", "sharded", "-o", "a.safetensors", mentions=(dropped, "not referenced"))


# ---- 4. damaged files and impossible paths: one line, exit 2 ---------------------------------


def test_a_garbage_gguf_file_is_named(ws):
    (ws / "model.gguf").write_bytes(b"this is not a gguf file at all" * 10)
    refused(ws, "inspect", "model.gguf", mentions=("model.gguf", "not a GGUF file"))


def test_prompt_files_that_are_not_utf8_or_hold_a_huge_prompt_are_named(ws):
    (ws / "latin1.jsonl").write_bytes('{"id": 1, "lang": "en", "text": "caf\xe9"}\n'.encode("latin-1"))
    refused(
        ws,
        *LOCATE,
        "--model",
        "base",
        "--harmful",
        "latin1.jsonl",
        "-o",
        "a.safetensors",
        mentions=("latin1.jsonl", "UTF-8"),
    )
    write_jsonl(ws / "huge.jsonl", [{"id": 1, "lang": "en", "text": "a" * 1_000_000}])
    refused(
        ws,
        *LOCATE,
        "--model",
        "base",
        "--harmful",
        "huge.jsonl",
        "-o",
        "a.safetensors",
        mentions=("huge.jsonl:1",),
    )


def test_a_language_that_is_not_a_code_is_named(ws):
    write_jsonl(ws / "odd.jsonl", [{"id": i, "lang": "Thai!", "text": "x y z"} for i in range(3)])
    refused(
        ws,
        *LOCATE,
        "--model",
        "base",
        "--harmful",
        "odd.jsonl",
        "-o",
        "a.safetensors",
        mentions=("odd.jsonl:1", "Thai!"),
    )


def _artifact_with(ws: Path, name: str, meta_change=None, tensor_change=None) -> Path:
    from safetensors import safe_open

    with safe_open(str(ws / "art.safetensors"), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(ws / "art.safetensors"))
    if meta_change is not None:
        metadata["sparse_edit"] = meta_change(metadata["sparse_edit"])
    if tensor_change is not None:
        tensor_change(tensors)
    save_file(tensors, str(ws / name), metadata=metadata)
    return ws / name


def _settings_not_a_mapping(raw: str) -> str:
    meta = json.loads(raw)
    meta["settings"] = ["model", "base"]
    return json.dumps(meta)


@pytest.mark.parametrize(
    ("label", "meta_change", "tensor_change", "mentions"),
    [
        ("not-json", lambda raw: raw[:-5], None, "not valid JSON"),
        ("settings", _settings_not_a_mapping, None, "'settings'"),
        ("range", None, lambda t: t.__setitem__("neurons.th.1", torch.tensor([0, 9999])), "outside 0..63"),
        ("missing", None, lambda t: t.pop("scores.yo.d"), "scores.yo.d"),
    ],
)
def test_a_damaged_artifact_is_named_by_apply_and_inspect(ws, label, meta_change, tensor_change, mentions):
    bad = _artifact_with(ws, f"{label}.safetensors", meta_change, tensor_change)
    refused(ws, *apply_args(Path(bad.name), Path("out")), mentions=(bad.name, mentions))
    refused(ws, "inspect", bad.name, mentions=(bad.name, mentions))


def test_output_paths_that_cannot_be_folders_are_refused_before_any_work(ws):
    (ws / "afile").write_text("x")
    refused(ws, *apply_args(Path("art.safetensors"), Path("afile/out")), mentions=("afile", "is a file"))
    (ws / "dangling").symlink_to(ws / "nowhere")
    refused(ws, *apply_args(Path("art.safetensors"), Path("dangling")), mentions=("dangling symbolic link",))


def test_config_that_is_a_folder_or_not_utf8_is_named(ws):
    (ws / "conf.d").mkdir()
    refused(ws, "apply", "-c", "conf.d", mentions=("--config conf.d", "folder"))
    (ws / "bad.toml").write_bytes("model = 'caf\xe9'\n".encode("latin-1"))
    refused(ws, "apply", "-c", "bad.toml", mentions=("--config bad.toml", "UTF-8"))


def test_a_full_disk_during_the_write_leaves_nothing(ws):
    line = refused(ws, *apply_args(Path("art.safetensors"), Path("out")), file_limit=20_000)
    assert "out" in line and "nothing was written" in line


def test_verify_on_a_manifest_that_is_not_json_is_an_error(ws):
    (ws / "edited" / MANIFEST_FILE).write_text("{not json")
    refused(ws, "verify", "base", "edited", "--skip-forward", mentions=("manifest.json", "not valid JSON"))


# ---- 5. the artifact, not an unrelated flag, is named ---------------------------------------


def test_a_missing_artifact_or_a_model_shard_as_artifact_is_named(ws):
    refused(
        ws,
        "apply",
        "--artifact",
        "missing.safetensors",
        "-o",
        "out",
        mentions=("--artifact missing.safetensors", "no such"),
    )
    refused(
        ws,
        "apply",
        "--artifact",
        "base/model.safetensors",
        "-o",
        "out",
        mentions=("--artifact base/model.safetensors", "not a sparse-edit locate artifact"),
    )


# ---- 6. what we wrote is checked against itself ---------------------------------------------


@pytest.mark.parametrize("field", ["layers", "changed_parameters", "delta_sha256", "edits", "deleted", "schema"])
def test_verify_fails_on_a_rewritten_or_deleted_manifest(ws, field):
    path = ws / "edited" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    if field == "deleted":
        path.unlink()
    else:
        changed = {
            "layers": [0],
            "changed_parameters": manifest["changed_parameters"] + 1,
            "delta_sha256": "0" * 64,
            "edits": manifest["edits"][:-1] + [{**manifest["edits"][-1], "tensor": "lm_head.weight"}],
            "schema": "not a manifest field",
        }
        manifest[field] = changed[field]
        path.write_text(json.dumps(manifest))
    refused(ws, "verify", "base", "edited", "--skip-forward", code=1, mentions=("manifest",))


def test_revert_refuses_a_delta_whose_hash_does_not_match(ws):
    path = ws / "edited" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["delta_sha256"] = "0" * 64
    path.write_text(json.dumps(manifest))
    refused(ws, "revert", "edited", "-o", "restored", mentions=("sha256",))


# ---- 7. leftovers of killed runs, and permissions ---------------------------------------------


def test_stale_staging_of_a_dead_run_is_removed_and_outputs_get_umask_modes(ws):
    pid = dead_pid()
    stale = ws / f".restored.{pid}.abc123.staging"
    stale.mkdir()
    (stale / STAGING_MARKER).write_text(json.dumps({"pid": pid}))
    (stale / "model.safetensors").write_bytes(b"half")
    foreign = ws / f".restored.{pid}.zzz.staging"  # same name shape, but not ours: kept
    foreign.mkdir()
    old = os.umask(0o022)
    try:
        run_cli("revert", ws / "edited", "-o", ws / "restored")
    finally:
        os.umask(old)
    assert not stale.exists() and foreign.is_dir()
    assert (ws / "restored").stat().st_mode & 0o777 == 0o755
    assert (ws / "restored" / "config.json").stat().st_mode & 0o777 == 0o644
    assert json.loads((ws / "restored" / OUTPUT_MARKER).read_text())["command"] == "revert"
    # The restored base is byte-identical to the base where it matters: every weight and config.
    for name in ("model.safetensors", "config.json"):
        assert (ws / "restored" / name).read_bytes() == (ws / "base" / name).read_bytes()


# ---- 8. locate --overwrite is a rerun, not a different artifact ------------------------------


def test_locate_overwrite_writes_the_same_bytes_as_a_fresh_run(ws):
    prompts = ["--harmful", ws / "harmful.jsonl", "--harmless", ws / "harmless.jsonl"]
    args = ["locate", "--model", ws / "base", *prompts, "--device", "cpu", "-q", "--tau-stat", "0.3"]
    run_cli(*args, "-o", ws / "fresh.safetensors")
    run_cli(*args, "-o", ws / "again.safetensors")
    stamp = (ws / "again.safetensors").stat().st_mtime_ns
    run_cli(*args, "-o", ws / "again.safetensors", "--overwrite")
    assert (ws / "again.safetensors").stat().st_mtime_ns >= stamp
    assert (ws / "again.safetensors").read_bytes() == (ws / "fresh.safetensors").read_bytes()
