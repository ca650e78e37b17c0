"""Reading ``.gguf`` files: a damaged one named in one line, and a cached conversion so a ``.gguf``
file is accepted wherever a model folder is expected.

transformers dequantises GGUF weights to ordinary float tensors; the result is saved once as
a plain safetensors folder in the cache (``$SPARSE_EDIT_CACHE`` or ``~/.cache/sparse-edit``)
keyed by the file's sha256, so later runs load it directly.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

from sparse_edit.errors import SparseEditError

GGUF_MAGIC = b"GGUF"
# Metadata keys sparse-edit adds to a patched file (and revert removes).
KEY_PREFIX = "sparse_edit."
# What the gguf reader (and transformers' own) raise on a damaged, truncated or unsupported file.
UNREADABLE = (ValueError, KeyError, OSError, RuntimeError, EOFError, struct.error)


def gguf_package() -> Any:
    try:
        import gguf
    except ImportError:
        raise SparseEditError(
            "reading or writing GGUF needs the gguf package: pip install 'sparse-edit[gguf]'"
        ) from None
    return gguf


def read(path: Path) -> Any:
    """A GGUFReader over ``path`` (memory-mapped), or one line naming what is wrong with the file."""
    gguf = gguf_package()
    try:
        return gguf.GGUFReader(str(path))
    except UNREADABLE as exc:
        raise SparseEditError(
            f"{path}: not a readable GGUF file, truncated or damaged ({exc})".splitlines()[0]
        ) from None


def convert_gguf(path: Path, target: Path) -> None:
    read(path)  # the whole file's structure, before transformers reads only what it needs
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    except UNREADABLE as exc:
        raise SparseEditError(
            f"{path}: transformers could not read this GGUF file ({exc})".splitlines()[0]
        ) from None
    # A model loaded from GGUF carries a quantizer that refuses save_pretrained; the weights are plain floats.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
