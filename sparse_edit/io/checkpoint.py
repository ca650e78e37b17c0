"""Open and validate a Hugging Face model folder without loading its weights."""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from sparse_edit.architectures import Dimensions, Family, dimensions, family_for_model_type, gate_activation
from sparse_edit.errors import SparseEditError
from sparse_edit.io.integrity import check_tensors, refuse_custom_code

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# Files that hold weights in another format; copying them next to edited safetensors would
# leave a stale, unedited copy of the model in the output.
FOREIGN_WEIGHT_PATTERNS = (*PICKLE_PATTERNS, "*.gguf", "*.h5", "*.msgpack", "*.onnx")

DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
DTYPE_TORCH = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    shard: str

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES.get(self.dtype, 0)


def read_header_bytes(path: Path) -> bytes:
    """The raw JSON header of a safetensors file (used for fingerprints)."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise SparseEditError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", prefix)
        if size > path.stat().st_size - 8:
            raise SparseEditError(f"{path}: safetensors header length exceeds the file; the file is truncated")
        return handle.read(size)


def data_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """Each tensor's byte range in a safetensors file (absolute offsets), from its header."""
    header = read_header_bytes(path)
    try:
        entries = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseEditError(f"{path}: safetensors header is not valid JSON ({exc})") from None
    base = 8 + len(header)
    return {
        name: (base + entry["data_offsets"][0], base + entry["data_offsets"][1])
        for name, entry in entries.items()
        if name != "__metadata__"
    }


@dataclass
class Checkpoint:
    """A validated Hugging Face model folder with safetensors weights."""

    path: Path
    config: dict[str, Any]
    shards: list[str]
    tensors: dict[str, TensorInfo]
    index: dict[str, Any] | None
    shard_metadata: dict[str, dict[str, str]] = field(default_factory=dict)
    _weights_digest: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: str | Path) -> Checkpoint:
        folder = Path(path)
        config = _read_config(folder)
        refuse_custom_code(folder)
        index, shards = _find_shards(folder)
        weight_map: dict[str, str] = index["weight_map"] if index is not None else {}
        tensors, metadata = _read_headers(folder, shards)
        index_path = folder / INDEX_FILE
        for name, shard in weight_map.items():
            info = tensors.get(name)
            if info is None or info.shard != shard:
                raise SparseEditError(f"{index_path}: weight_map says {name} is in {shard}, but it is not there")
        unlisted = sorted(set(tensors) - set(weight_map)) if index is not None else []
        if unlisted:
            raise SparseEditError(
                f"{index_path}: tensors present in shards but missing from weight_map: {', '.join(unlisted[:5])}"
            )
        return cls(folder, config, shards, tensors, index, metadata)

    def check_complete(self) -> None:
        """Every tensor the config's architecture expects is present with the config's shape."""
        check_tensors(self.path, {name: info.shape for name, info in self.tensors.items()}, str(self.path))

    @cached_property
    def family(self) -> Family:
        return family_for_model_type(self.config.get("model_type"), where=str(self.path / "config.json"))

    @cached_property
    def dims(self) -> Dimensions:
        return dimensions(self.config, where=str(self.path / "config.json"))

    def gate_activation(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return gate_activation(self.config, where=str(self.path / "config.json"))

    @property
    def sharded(self) -> bool:
        return self.index is not None

    @property
    def tied_embeddings(self) -> bool:
        # transformers ties by default when the flag is absent; a missing lm_head also means tied.
        flag = self.config.get("tie_word_embeddings")
        if flag is None and isinstance(self.config.get("text_config"), dict):
            flag = self.config["text_config"].get("tie_word_embeddings")
        return bool(flag if flag is not None else True) or "lm_head.weight" not in self.tensors

    @property
    def parameter_count(self) -> int:
        return sum(info.numel for info in self.tensors.values())

    @property
    def dtypes(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for info in self.tensors.values():
            counts[info.dtype] = counts.get(info.dtype, 0) + 1
        return counts

    def shard_sizes(self) -> dict[str, int]:
        return {shard: (self.path / shard).stat().st_size for shard in self.shards}

    def torch_dtype(self, name: str) -> torch.dtype:
        return DTYPE_TORCH[self.tensors[name].dtype]

    def require(self, name: str) -> TensorInfo:
        info = self.tensors.get(name)
        if info is None:
            raise SparseEditError(f"{self.path}: tensor {name} not found in the checkpoint")
        return info

    def load_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor from its shard (lazily, without loading the rest)."""
        info = self.require(name)
        with safe_open(str(self.path / info.shard), framework="pt") as handle:
            return handle.get_tensor(name)

    def fingerprint(self) -> str:
        """sha256 over every shard header: names, shapes, dtypes and offsets of all tensors."""
        digest = hashlib.sha256()
        for shard in self.shards:
            digest.update(shard.encode())
            digest.update(read_header_bytes(self.path / shard))
        return digest.hexdigest()

    def weights_sha256(self) -> str:
        """sha256 over every tensor's name, dtype, shape and stored bytes, in name order.

        What a measurement on these weights depends on: two checkpoints of one shape (another seed, a
        fine-tune) differ here even where their shard headers agree. Streamed from the shards in chunks.
        """
        if self._weights_digest is None:
            digest = hashlib.sha256()
            ranges = {shard: data_ranges(self.path / shard) for shard in self.shards}
            for name in sorted(self.tensors):
                info = self.tensors[name]
                digest.update(json.dumps([name, info.dtype, list(info.shape)]).encode())
                start, end = ranges[info.shard][name]
                with (self.path / info.shard).open("rb") as handle:
                    handle.seek(start)
                    left = end - start
                    while left > 0:
                        chunk = handle.read(min(left, 1 << 24))
                        if not chunk:
                            raise SparseEditError(f"{self.path / info.shard}: tensor {name} is cut short")
                        digest.update(chunk)
                        left -= len(chunk)
            self._weights_digest = digest.hexdigest()
        return self._weights_digest

    def structure(self) -> dict[str, Any]:
        """What an artifact must match to be applied to this model."""
        return {
            "model_type": self.config.get("model_type"),
            "num_layers": self.dims.num_layers,
            "hidden_size": self.dims.hidden_size,
            "mlp_width": self.dims.mlp_width,
        }

    def summary(self) -> dict[str, Any]:
        family = self.family
        return {
            "path": str(self.path),
            "family": family.name,
            "model_type": self.config.get("model_type"),
            "architectures": self.config.get("architectures"),
            "num_layers": self.dims.num_layers,
            "hidden_size": self.dims.hidden_size,
            "mlp_width": self.dims.mlp_width,
            "dtypes": self.dtypes,
            "shards": self.shard_sizes(),
            "sharded": self.sharded,
            "tied_embeddings": self.tied_embeddings,
            "parameters": self.parameter_count,
            "fingerprint": self.fingerprint(),
        }


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise SparseEditError(f"{folder}: no such model folder")
    if not folder.is_dir():
        raise SparseEditError(f"{folder}: expected a model folder (with config.json and *.safetensors)")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SparseEditError(f"{folder}: no config.json; point to a Hugging Face model folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseEditError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise SparseEditError(f"{config_path}: expected a JSON object")
    return config


def _find_shards(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """(the index or None, the shard file names); refuses pickles and shards the index leaves out."""
    index_path = folder / INDEX_FILE
    if index_path.is_file():
        index = _read_index(index_path)
        shards = sorted(set(index["weight_map"].values()))
        stray = sorted(p.name for p in folder.glob("model*.safetensors") if p.name not in shards)
        if stray:
            raise SparseEditError(
                f"{index_path}: shard {stray[0]} is in the folder but not referenced by weight_map; "
                "the index does not describe these weights"
            )
        return index, shards
    if (folder / SINGLE_FILE).is_file():
        return None, [SINGLE_FILE]
    pickles = [p.name for pattern in PICKLE_PATTERNS for p in folder.glob(pattern)]
    if pickles:
        raise SparseEditError(
            f"{folder}: only pickle weights found ({', '.join(sorted(pickles))}); sparse-edit never "
            "unpickles. If you trust the file, convert it once with transformers: "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR, safe_serialization=True)"
        )
    raise SparseEditError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} found")


def _read_headers(folder: Path, shards: list[str]) -> tuple[dict[str, TensorInfo], dict[str, dict[str, str]]]:
    """Every tensor's name, shape, dtype and shard, and each shard's metadata, from the headers only."""
    tensors: dict[str, TensorInfo] = {}
    metadata: dict[str, dict[str, str]] = {}
    for shard in shards:
        shard_path = folder / shard
        if not shard_path.is_file():
            raise SparseEditError(f"{folder / INDEX_FILE}: shard {shard} listed in weight_map does not exist")
        read_header_bytes(shard_path)
        try:
            with safe_open(str(shard_path), framework="pt") as handle:
                metadata[shard] = dict(handle.metadata() or {})
                for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                    tensor_slice = handle.get_slice(name)
                    if name in tensors:
                        raise SparseEditError(f"{shard_path}: tensor {name} also appears in {tensors[name].shard}")
                    tensors[name] = TensorInfo(
                        name, tuple(tensor_slice.get_shape()), tensor_slice.get_dtype(), shard
                    )
        except SafetensorError as exc:
            raise SparseEditError(f"{shard_path}: safetensors header does not parse ({exc})") from exc
    return tensors, metadata


def _read_index(index_path: Path) -> dict[str, Any]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SparseEditError(f"{index_path}: not valid JSON ({exc})") from exc
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise SparseEditError(f"{index_path}: missing or empty weight_map")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard:
            raise SparseEditError(f"{index_path}: weight_map entry {name!r} has no shard file name")
        shard_path = Path(shard)
        if shard_path.is_absolute() or ".." in shard_path.parts or len(shard_path.parts) != 1:
            raise SparseEditError(
                f"{index_path}: weight_map entry {name!r} points outside the folder ({shard}); "
                "shard names must be plain file names"
            )
    return index
