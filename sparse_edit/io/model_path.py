"""A --model value as a safetensors folder: the folder itself, a cached .gguf conversion, or a zoo: model."""

from __future__ import annotations

from pathlib import Path

from sparse_edit.errors import SparseEditError
from sparse_edit.io.files import cache_root, file_sha256
from sparse_edit.io.gguf import GGUF_MAGIC, convert_gguf

ZOO_PREFIX = "zoo:"


def ensure_hf_folder(path: Path) -> Path:
    """``path`` itself for a folder; for a .gguf file, the cached safetensors conversion;
    for ``zoo:NAME``, the pinned offline model of that name (see ``sparse_edit.io.zoo``)."""
    if str(path).startswith(ZOO_PREFIX):
        from sparse_edit.io.zoo import gguf_file

        return ensure_hf_folder(gguf_file(str(path)[len(ZOO_PREFIX) :]))
    path = Path(path)
    if path.suffix != ".gguf":
        return path
    if not path.is_file():
        raise SparseEditError(f"{path}: no such GGUF file")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise SparseEditError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")
    target = cache_root() / "gguf" / file_sha256(path)[:16]
    if (target / "config.json").is_file():
        return target
    convert_gguf(path, target)
    return target
