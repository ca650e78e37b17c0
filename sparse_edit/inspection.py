"""``sparse-edit inspect``: what a path holds, as a flat summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint


def describe(path: Path) -> dict[str, Any]:
    from sparse_edit.io.model_path import ZOO_PREFIX, ensure_hf_folder

    if str(path).startswith(ZOO_PREFIX) or path.suffix == ".gguf":
        path = ensure_hf_folder(path)
    if path.is_dir():
        return Checkpoint.open(path).summary()
    if path.is_file() and path.suffix == ".safetensors":
        from sparse_edit.neurons.artifact import LocateArtifact, is_locate_artifact

        if is_locate_artifact(path):
            return LocateArtifact.load(path).summary()
        raise SparseEditError(f"{path}: a safetensors file but not a sparse-edit artifact; inspect its folder")
    if not path.exists():
        raise SparseEditError(f"{path}: no such file or folder")
    raise SparseEditError(f"{path}: expected a model folder or a sparse-edit artifact (.safetensors)")
