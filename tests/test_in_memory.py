"""An edit applied to and taken back from a model loaded in memory: the same weights as the written folder."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import sparse_edit as se
from sparse_edit.errors import SparseEditError
from tests.helpers import apply_args, run_cli


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


@pytest.mark.parametrize("strategy", ["paper", "detector"])
def test_an_edit_applied_in_memory_equals_the_written_folder_and_reverts_exactly(located, tmp_path, strategy):
    base_folder, artifact = located("llama")
    out = tmp_path / "edited"
    run_cli(*apply_args(artifact, out, "--strategy", strategy))
    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    base = _state(model)
    written = _state(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32))

    se.apply_to_model(model, out)
    after = _state(model)
    assert any(not torch.equal(after[name], base[name]) for name in base)  # the edit changed something
    assert all(torch.equal(after[name], written[name]) for name in written)

    with pytest.raises(SparseEditError, match="already edited"):
        se.apply_to_model(model, out)  # applied twice: refused, nothing changed
    assert all(torch.equal(value, after[name]) for name, value in _state(model).items())

    se.revert_on_model(model, out)
    assert all(torch.equal(value, base[name]) for name, value in _state(model).items())
    with se.edited_model(model, out) as patched:
        assert all(torch.equal(patched.state_dict()[name], written[name]) for name in written)
    assert all(torch.equal(value, base[name]) for name, value in _state(model).items())


def test_an_edit_refuses_a_model_it_was_not_made_for(located, tmp_path):
    base_folder, artifact = located("llama")
    out = tmp_path / "edited"
    run_cli(*apply_args(artifact, out))
    other = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(1e-3)  # fine-tuned a little: no longer the weights the edit was measured on
    before = _state(other)
    with pytest.raises(SparseEditError, match="not the one it was made for"):
        se.apply_to_model(other, out)
    assert all(torch.equal(value, before[name]) for name, value in _state(other).items())
    with pytest.raises(SparseEditError, match="not a sparse-edit delta|missing"):
        se.apply_to_model(other, tmp_path)
