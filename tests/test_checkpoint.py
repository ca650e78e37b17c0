from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.writer import write_checkpoint
from sparse_edit.testing import TINY_FAMILIES


def logits(folder: Path) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(folder).float().eval()
    with torch.no_grad():
        return model(torch.arange(10).unsqueeze(0)).logits


@pytest.mark.parametrize("model_type", TINY_FAMILIES)
def test_every_family_opens_and_round_trips(tiny_models, tmp_path, model_type):
    source = tiny_models(model_type)
    ckpt = Checkpoint.open(source)
    assert ckpt.family.model_types == (json.loads((source / "config.json").read_text())["model_type"],)
    out = tmp_path / "out"
    write_checkpoint(ckpt, out, {}, command="apply")
    assert torch.equal(logits(source), logits(out))
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()


def test_sharded_bf16_tied_is_detected(sharded_dir):
    ckpt = Checkpoint.open(sharded_dir)
    assert ckpt.sharded and len(ckpt.shards) > 1
    assert ckpt.tied_embeddings
    assert set(ckpt.dtypes) == {"BF16"}
    assert "lm_head.weight" not in ckpt.tensors


def test_untied_is_detected(tiny_models):
    assert not Checkpoint.open(tiny_models("qwen2", tied=False)).tied_embeddings


def test_replacing_one_tensor_touches_only_its_shard(sharded_dir, tmp_path):
    ckpt = Checkpoint.open(sharded_dir)
    name = "model.layers.1.mlp.gate_proj.weight"
    new = ckpt.load_tensor(name).clone()
    new[3] += 1
    out = tmp_path / "edited"
    rewritten = write_checkpoint(ckpt, out, {name: new}, command="apply")
    target_shard = ckpt.tensors[name].shard
    assert rewritten == [target_shard]
    for shard in ckpt.shards:
        if shard != target_shard:
            assert (out / shard).read_bytes() == (sharded_dir / shard).read_bytes()
    edited = Checkpoint.open(out)
    assert edited.tensors.keys() == ckpt.tensors.keys()
    for other in ckpt.tensors:
        if other == name:
            assert torch.equal(edited.load_tensor(other), new)
        else:
            assert torch.equal(edited.load_tensor(other), ckpt.load_tensor(other))
        assert edited.tensors[other].dtype == ckpt.tensors[other].dtype
    with safe_open(str(out / target_shard), "pt") as handle:
        assert handle.metadata()["format"] == "pt"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == ckpt.index["weight_map"]
    assert index["metadata"]["total_size"] == sum(i.nbytes for i in ckpt.tensors.values())


def test_writer_refuses_input_as_output_and_existing_output(llama_dir, tmp_path):
    ckpt = Checkpoint.open(llama_dir)
    with pytest.raises(SparseEditError, match="is the input"):
        write_checkpoint(ckpt, llama_dir, {}, command="apply")
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    with pytest.raises(SparseEditError, match="--overwrite"):
        write_checkpoint(ckpt, existing, {}, command="apply")
    # --overwrite replaces only an earlier output of the same command, never a foreign folder.
    with pytest.raises(SparseEditError, match="not written by sparse-edit apply"):
        write_checkpoint(ckpt, existing, {}, command="apply", overwrite=True)
    assert (existing / "keep.txt").is_file()
    ours = tmp_path / "ours"
    write_checkpoint(ckpt, ours, {}, command="apply")
    (ours / "keep.txt").write_text("x")
    with pytest.raises(SparseEditError, match="not written by sparse-edit revert"):
        write_checkpoint(ckpt, ours, {}, command="revert", overwrite=True)
    write_checkpoint(ckpt, ours, {}, command="apply", overwrite=True)
    assert not (ours / "keep.txt").exists() and (ours / "model.safetensors").is_file()


def test_writer_killed_midway_leaves_no_destination(tmp_path, tiny_models):
    source = tiny_models("llama", max_shard_size="20KB")
    dest = tmp_path / "never"
    script = textwrap.dedent(
        f"""
        import os, signal, torch
        import sparse_edit.io.writer as w
        from sparse_edit.io.checkpoint import Checkpoint
        original = w.patch_shard
        def dying(*args, **kwargs):
            original(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
        w.patch_shard = dying
        ckpt = Checkpoint.open({str(source)!r})
        name = "model.layers.0.mlp.gate_proj.weight"
        w.write_checkpoint(ckpt, {str(dest)!r}, {{name: ckpt.load_tensor(name) + 1}}, command="apply")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert result.returncode == -9
    assert not dest.exists()
    assert any(p.name.endswith(".staging") for p in tmp_path.iterdir())


def test_pickle_weights_are_not_copied_into_the_output(llama_dir, tmp_path):
    source = tmp_path / "with-bin"
    shutil.copytree(llama_dir, source)
    (source / "pytorch_model.bin").write_bytes(b"not really a pickle")
    warnings: list[str] = []
    write_checkpoint(Checkpoint.open(source), tmp_path / "out", {}, command="apply", warn=warnings.append)
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    assert "pytorch_model.bin" in warnings[0]


def _broken_copy(source: Path, tmp_path: Path, name: str) -> Path:
    broken = tmp_path / name
    shutil.copytree(source, broken)
    return broken


def test_bad_inputs_give_clear_errors(tmp_path, tiny_models, llama_dir):
    sharded = tiny_models("llama", max_shard_size="20KB")
    index_name = "model.safetensors.index.json"

    missing_shard = _broken_copy(sharded, tmp_path, "missing-shard")
    shard = sorted(missing_shard.glob("*.safetensors"))[0]
    shard.unlink()
    with pytest.raises(SparseEditError, match="does not exist"):
        Checkpoint.open(missing_shard)

    escaping = _broken_copy(sharded, tmp_path, "escaping")
    index = json.loads((escaping / index_name).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../evil.safetensors"
    (escaping / index_name).write_text(json.dumps(index))
    with pytest.raises(SparseEditError, match="outside the folder"):
        Checkpoint.open(escaping)

    wrong_key = _broken_copy(sharded, tmp_path, "wrong-key")
    index = json.loads((wrong_key / index_name).read_text())
    index["weight_map"]["model.layers.9.mlp.gate_proj.weight"] = next(iter(index["weight_map"].values()))
    (wrong_key / index_name).write_text(json.dumps(index))
    with pytest.raises(SparseEditError, match="is not there"):
        Checkpoint.open(wrong_key)

    corrupt = _broken_copy(llama_dir, tmp_path, "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(SparseEditError, match="model.safetensors"):
        Checkpoint.open(corrupt)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(llama_dir / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(SparseEditError, match="never unpickles"):
        Checkpoint.open(pickled)

    unknown = _broken_copy(llama_dir, tmp_path, "unknown")
    config = json.loads((unknown / "config.json").read_text())
    config["model_type"] = "mamba"
    (unknown / "config.json").write_text(json.dumps(config))
    with pytest.raises(SparseEditError, match="supported: .*llama.*qwen2"):
        _ = Checkpoint.open(unknown).family
