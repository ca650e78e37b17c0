"""Writing a patched copy of a ``.gguf`` file: every tensor's bytes and every metadata key kept,
only the edited tensors replaced.

An edited tensor is written in its source type where the ``gguf`` package can quantize it
(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1); blocks whose values the edit did not change keep
their original bytes. Other types (the K- and IQ-quants, which the package can read but not write)
are written as F32: exact for every value the edit did not touch, at 4 bytes per weight.
The file is written beside the destination and renamed into place when complete; tensors are
streamed from the memory-mapped source, so memory holds about one tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparse_edit.errors import SparseEditError
from sparse_edit.io.gguf import KEY_PREFIX, gguf_package, read
from sparse_edit.io.staging import staged_file


@dataclass(frozen=True)
class Replacement:
    """What one edited tensor became: its type in the patched file and its original bytes and type."""

    name: str
    written_type: str
    original_type: str
    original: np.ndarray  # raw bytes (uint8) or values, as stored in the source file


def dequantized(tensor: Any) -> np.ndarray:
    """A reader tensor's values as float32, in the Hugging Face orientation ``[rows, columns]``."""
    gguf = gguf_package()
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


WRITABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1")


def encode(values: np.ndarray, source: Any) -> tuple[np.ndarray, Any]:
    """``values`` (float32) in the source tensor's type where it can be written, else F32.

    Blocks whose values equal the source's keep the source's bytes, so requantizing never moves
    a weight the edit did not touch.
    """
    gguf = gguf_package()
    kind = source.tensor_type
    if kind.name not in WRITABLE:
        return values.astype(np.float32), gguf.GGMLQuantizationType.F32
    if kind.name == "F32":
        return values.astype(np.float32), kind
    if kind.name == "F16":
        return values.astype(np.float16), kind
    encoded = np.asarray(gguf.quants.quantize(values, kind))
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    rows = values.shape[0]
    old_values = dequantized(source).reshape(rows, -1, block)
    same = (old_values == values.reshape(rows, -1, block)).all(axis=-1)  # [rows, blocks]
    new_bytes = encoded.reshape(rows, -1, block_bytes)
    new_bytes[same] = np.asarray(source.data).reshape(rows, -1, block_bytes)[same]
    return new_bytes.reshape(encoded.shape), kind


def _copy_metadata(reader: Any, writer: Any, extra: Mapping[str, str]) -> None:
    gguf = gguf_package()
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key.startswith(KEY_PREFIX):
            continue  # the writer adds the header and the architecture itself
        kind = field.types[0]
        sub = field.types[1] if kind == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
        writer.add_key_value(key, field.contents(), kind, sub_type=sub)
    for key, value in extra.items():
        writer.add_string(KEY_PREFIX + key, value)


def write_patched(
    source: Path, dest: Path, values: Mapping[str, np.ndarray], metadata: Mapping[str, str]
) -> list[Replacement]:
    """Write ``source`` to ``dest`` with ``values`` (GGUF tensor name -> float32 [rows, columns]) swapped in."""
    replaced: list[Replacement] = []

    def swap(tensor: Any) -> tuple[np.ndarray, Any] | None:
        if tensor.name not in values:
            return None
        data, kind = encode(values[tensor.name], tensor)
        replaced.append(Replacement(tensor.name, kind.name, tensor.tensor_type.name, np.array(tensor.data)))
        return data, kind

    reader = read(source)
    missing = sorted(set(values) - {tensor.name for tensor in reader.tensors})
    if missing:
        raise SparseEditError(f"{source}: no tensor {missing[0]} in this GGUF file")
    _rewrite(reader, dest, swap, metadata)
    return replaced


def restore(source: Path, dest: Path, originals: Mapping[str, tuple[np.ndarray, str]]) -> None:
    """Write ``source`` to ``dest`` with the ``originals`` (raw data, type name) back and sparse-edit's keys gone."""
    gguf = gguf_package()

    def swap(tensor: Any) -> tuple[np.ndarray, Any] | None:
        if tensor.name not in originals:
            return None
        data, kind_name = originals[tensor.name]
        return data, gguf.GGMLQuantizationType[kind_name]

    _rewrite(read(source), dest, swap, {})


def _rewrite(reader: Any, dest: Path, swap: Any, metadata: Mapping[str, str]) -> None:
    """Every tensor of ``reader`` to ``dest`` in order, ``swap(tensor)`` replacing some; staged and atomic."""
    gguf = gguf_package()
    architecture = reader.fields["general.architecture"].contents()
    with staged_file(dest) as temporary:
        writer = gguf.GGUFWriter(str(temporary), architecture)
        _copy_metadata(reader, writer, metadata)
        for tensor in reader.tensors:
            data, kind = swap(tensor) or (tensor.data, tensor.tensor_type)
            writer.add_tensor(tensor.name, data, raw_shape=data.shape, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
