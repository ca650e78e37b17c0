"""Accept a ``.gguf`` file wherever a model folder is expected, via a cached conversion.

transformers dequantises GGUF weights to ordinary float tensors; the result is saved once as
a plain safetensors folder in the cache (``$SPARSE_EDIT_CACHE`` or ``~/.cache/sparse-edit``)
keyed by the file's sha256, so later runs load it directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sparse_edit.errors import SparseEditError

GGUF_MAGIC = b"GGUF"


def convert_gguf(path: Path, target: Path) -> None:
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise SparseEditError(
            f"{path}: reading GGUF needs the gguf package: pip install 'sparse-edit[gguf]'"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    except (ValueError, KeyError, OSError, RuntimeError, EOFError) as exc:
        # The gguf reader reports a damaged or unsupported file with any of these.
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
