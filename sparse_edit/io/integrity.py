"""Checks that a checkpoint is what its config says, before any model code touches it.

transformers fills a tensor missing from the weights with random values and goes on; an
edit computed on such a model changes on every run. These checks refuse that, and a config
whose sizes disagree with the tensors, before the first forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sparse_edit.errors import SparseEditError

# Config and tokenizer files whose ``auto_map`` would make transformers import the folder's own code.
CODE_MAP_FILES = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def refuse_custom_code(folder: Path) -> None:
    """A folder that asks to run its own Python code is refused: sparse-edit never runs it."""
    for name in CODE_MAP_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SparseEditError(f"{path}: not valid JSON ({exc})".splitlines()[0]) from None
        auto_map = content.get("auto_map") if isinstance(content, dict) else None
        if auto_map:
            entry = next(iter(auto_map.items())) if isinstance(auto_map, dict) else auto_map
            raise SparseEditError(
                f"{path}: auto_map {entry} asks to run the model folder's own code, which sparse-edit never does; "
                "use a model whose architecture transformers ships"
            )


def expected_tensors(folder: Path) -> tuple[dict[str, tuple[int, ...]], list[set[str]]]:
    """Every tensor the config's architecture stores (name -> shape), and the groups of tied names.

    The model is built on the meta device, so no memory is allocated and no weight is read.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with torch.device("meta"):
        model: Any = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    state = model.state_dict(keep_vars=True)
    by_tensor: dict[int, set[str]] = {}
    for name, tensor in state.items():
        by_tensor.setdefault(id(tensor), set()).add(name)
    return {name: tuple(tensor.shape) for name, tensor in state.items()}, list(by_tensor.values())


def check_tensors(folder: Path, stored: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse missing tensors and shapes that disagree with the config (tied copies count once)."""
    expected, tied_groups = expected_tensors(folder)
    for group in tied_groups:
        if not group & set(stored):
            name = sorted(group)[0]
            raise SparseEditError(
                f"{where}: tensor {name} is missing from the weights; the checkpoint is incomplete "
                "(transformers would fill it with random values)"
            )
    for name, shape in sorted(expected.items()):
        if name in stored and stored[name] != shape:
            raise SparseEditError(
                f"{where}: tensor {name} is {list(stored[name])} in the weights, but config.json implies "
                f"{list(shape)}; the config does not belong to these weights"
            )


def check_finite(model: torch.nn.Module, where: str) -> None:
    """Refuse weights with NaN or infinity: every statistic and edit computed from them would be too."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.is_floating_point() and not bool(torch.isfinite(parameter).all()):
                raise SparseEditError(
                    f"{where}: tensor {name} holds NaN or infinite values; the weights are damaged"
                )
