"""GGUF in, GGUF out: apply writes a patched .gguf, verify checks it, revert restores the source tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse_edit.testing import build_tiny_model, write_tiny_gguf
from tests.helpers import parallel_prompt_files, run_cli

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    hf = build_tiny_model(root / "hf", "qwen2")
    harmful, harmless = parallel_prompt_files(root, count=10)
    return root, hf, harmful, harmless


@pytest.mark.parametrize(
    ("model_type", "quantization"), [("qwen2", "F32"), ("qwen2", "F16"), ("qwen2", "Q8_0"), ("llama", "Q8_0")]
)
def test_apply_verify_revert_on_a_gguf_file(workspace, model_type, quantization, tmp_path, monkeypatch):
    root, _, harmful, harmless = workspace
    hf = build_tiny_model(tmp_path / "hf", model_type)
    monkeypatch.setenv("SPARSE_EDIT_CACHE", str(tmp_path / "cache"))
    source = write_tiny_gguf(hf, tmp_path / f"tiny-{quantization}.gguf", quantization)
    common = ["--harmful", harmful, "--harmless", harmless, "--device", "cpu", "-q"]
    artifact = tmp_path / "locate.safetensors"
    run_cli("locate", "--model", source, *common, "--tau-stat", "0.3", "-o", artifact)
    edit = ["--strategy", "output", "--layer", "1", "--gamma", "0.01", "--lam", "1e-3", "--device", "cpu", "-q"]
    patched = tmp_path / "patched.gguf"
    run_cli("apply", "--artifact", artifact, "-o", patched, *edit)
    assert (tmp_path / "patched.gguf.sparse_edit" / "sparse_edit" / "manifest.json").is_file()

    report = run_cli("verify", source, patched).output
    assert "FAIL" not in report and "loads" in report, report

    before = {t.name: t for t in gguf.GGUFReader(str(source)).tensors}
    after = {t.name: t for t in gguf.GGUFReader(str(patched)).tensors}
    assert list(before) == list(after)
    changed = [n for n in before if not np.array_equal(np.asarray(before[n].data), np.asarray(after[n].data))]
    assert changed == ["blk.1.ffn_down.weight"]
    assert after["blk.1.ffn_down.weight"].tensor_type == before["blk.1.ffn_down.weight"].tensor_type

    restored = tmp_path / "restored.gguf"
    run_cli("revert", patched, "-o", restored)
    again = {t.name: t for t in gguf.GGUFReader(str(restored)).tensors}
    assert all(np.array_equal(np.asarray(before[n].data), np.asarray(again[n].data)) for n in before)
    assert not any(key.startswith("sparse_edit.") for key in gguf.GGUFReader(str(restored)).fields)


def test_the_patched_gguf_runs_like_the_patched_safetensors(workspace, tmp_path, monkeypatch):
    """Same edit written both ways: logits agree within the written type's rounding (F32 here: 1e-5)."""
    from transformers import AutoModelForCausalLM

    root, hf, harmful, harmless = workspace
    monkeypatch.setenv("SPARSE_EDIT_CACHE", str(tmp_path / "cache"))
    source = write_tiny_gguf(hf, tmp_path / "tiny.gguf", "F32")
    common = ["--harmful", harmful, "--harmless", harmless, "--device", "cpu", "-q"]
    artifact = tmp_path / "locate.safetensors"
    run_cli("locate", "--model", source, *common, "--tau-stat", "0.3", "-o", artifact)
    edit = ["--strategy", "output", "--layer", "1", "--gain", "4", "--device", "cpu", "-q"]
    run_cli("apply", "--artifact", artifact, "-o", tmp_path / "patched.gguf", *edit)
    run_cli("apply", "--artifact", artifact, "-o", tmp_path / "patched-st", *edit)
    ids = torch.tensor([[257, 60, 61, 62, 63, 64, 65]])
    as_gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="patched.gguf", dtype=torch.float32)
    as_folder = AutoModelForCausalLM.from_pretrained(tmp_path / "patched-st", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    with torch.inference_mode():
        edited_gguf, edited_folder, unedited = (m(ids).logits for m in (as_gguf, as_folder, base))
    assert not torch.allclose(edited_folder, unedited, atol=1e-4)  # the edit does something
    assert torch.allclose(edited_gguf, edited_folder, atol=1e-5)


def test_gguf_output_needs_a_gguf_model(workspace, tmp_path):
    root, hf, harmful, harmless = workspace
    artifact = tmp_path / "locate.safetensors"
    common = ["--harmful", harmful, "--harmless", harmless, "--device", "cpu", "-q"]
    run_cli("locate", "--model", hf, *common, "--tau-stat", "0.3", "-o", artifact)
    result = run_cli(
        "apply", "--artifact", artifact, "-o", tmp_path / "x.gguf", "--layer", "1", "--device", "cpu", code=2
    )
    assert "GGUF out needs GGUF in" in result.stderr and not (tmp_path / "x.gguf").exists()
