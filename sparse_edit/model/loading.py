"""Loading a model for inference and turning prompts into left-padded, length-sorted batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparse_edit.architectures import Family
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.integrity import check_finite
from sparse_edit.options import ModelOptions


def resolve_device(spec: str) -> str:
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SparseEditError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if ":" in spec and int(spec.split(":")[1]) >= torch.cuda.device_count():
            raise SparseEditError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise SparseEditError("--device mps: MPS is not available on this machine; use --device cpu")
    return spec


def resolve_dtype(spec: str, device: str, checkpoint: Checkpoint) -> torch.dtype:
    if spec != "auto":
        return getattr(torch, spec)
    if device == "cpu":
        return torch.float32
    stored = checkpoint.config.get("torch_dtype") or checkpoint.config.get("dtype") or "float32"
    return getattr(torch, str(stored), torch.float32)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    checkpoint: Checkpoint
    family: Family
    device: str

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def num_layers(self) -> int:
        return self.checkpoint.dims.num_layers


def load_model(options: ModelOptions, path: Path | None = None) -> LoadedModel:
    """Load the checkpoint at ``path`` (default: ``options.model``) for inference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse_edit.io.model_path import ensure_hf_folder

    folder = ensure_hf_folder(path or options.model)
    checkpoint = Checkpoint.open(folder)
    family = checkpoint.family
    checkpoint.check_complete()
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device, checkpoint)
    # Never the folder's own code: Checkpoint.open refuses an auto_map, and this makes sure.
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False}
    if device == "cuda" and options.device == "auto":
        kwargs["device_map"] = "auto"  # accelerate spreads a large model over every visible GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise SparseEditError(f"{folder}: transformers could not load it ({exc})".splitlines()[0]) from exc
    check_finite(model, str(folder))
    if "device_map" not in kwargs:
        model.to(torch.device(device))  # type: ignore[arg-type]  # transformers types .to() narrowly
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, checkpoint, family, device)
