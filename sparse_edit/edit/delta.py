"""A sparse, low-rank weight change: what it touches, how to apply it, and its file format.

Each ``SliceEdit`` changes the weight vectors of some neurons in one projection: the
neuron-major block ``rows`` ([m, other_dim], see ``NeuronSlice``) becomes
``cast(float32(rows) + a @ b)``. ``sparse_edit/delta.safetensors`` in an edited folder holds
the neuron indices, the factors ``a`` and ``b`` and the original rows (so ``revert`` is exact),
plus the harmless Gram matrices that ``verify`` uses to recompute the leak.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from sparse_edit.architectures import NeuronSlice
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import DELTA_KIND as KIND
from sparse_edit.io.layout import META_KEY, read_metadata

SCHEMA_VERSION = 1

# Which axis of the neuron-major block the edit's keys live on: "columns" for input-side
# edits (keys are MLP inputs, [m, d]), "rows" for output-side edits (keys are the neurons).
KeyAxis = Literal["columns", "rows"]


@dataclass
class SliceEdit:
    layer: int
    projection: str
    slice: NeuronSlice
    neurons: torch.Tensor  # int64 [m]
    a: torch.Tensor  # float32 [m, r]
    b: torch.Tensor  # float32 [r, other_dim]
    key_axis: KeyAxis = "columns"
    original: torch.Tensor | None = None  # [m, other_dim] in the checkpoint dtype
    # Whether verify counts this edit in its layer's harmless leak (the stored Gram is of its keys); False
    # for a chain's detector rows beside a low-rank part at the same layer.
    leak_checked: bool = True

    @property
    def rows_delta(self) -> torch.Tensor:
        return self.a.float() @ self.b.float()

    @property
    def changed_parameters(self) -> int:
        return int(self.neurons.numel()) * int(self.b.shape[1])


def apply_rows(rows: torch.Tensor, delta: torch.Tensor, stored_dtype: torch.dtype) -> torch.Tensor:
    """The edited rows as stored: float32 add, then one cast to the checkpoint dtype."""
    return (rows.float() + delta.to(rows.device)).to(stored_dtype)


@contextmanager
def applied_in_memory(
    model: torch.nn.Module, edits: Sequence[SliceEdit], stored_dtypes: dict[str, torch.dtype]
) -> Iterator[None]:
    """Apply edits to a loaded model's parameters, rounding as the written checkpoint will, then restore."""
    saved: list[tuple[torch.Tensor, SliceEdit, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for edit in edits:
                param = model.get_parameter(edit.slice.tensor)
                index = edit.neurons.to(param.device)
                rows = edit.slice.read(param.data, index).clone(memory_format=torch.contiguous_format)
                saved.append((param.data, edit, rows))
                new = apply_rows(rows, edit.rows_delta, stored_dtypes[edit.slice.tensor]).to(param.dtype)
                edit.slice.write(param.data, index, new)
        yield
    finally:
        with torch.no_grad():
            for data, edit, rows in reversed(saved):
                edit.slice.write(data, edit.neurons.to(data.device), rows)


@dataclass
class WriteBack:
    replacements: dict[str, torch.Tensor]
    retention: dict[str, float]  # per edited tensor: share of ‖ΔW‖ that survived the cast


def write_back(checkpoint: Checkpoint, edits: Sequence[SliceEdit]) -> WriteBack:
    """Edited copies of the touched tensors (one tensor in memory per name)."""
    by_tensor: dict[str, list[SliceEdit]] = {}
    for edit in edits:
        by_tensor.setdefault(edit.slice.tensor, []).append(edit)
    replacements: dict[str, torch.Tensor] = {}
    retention: dict[str, float] = {}
    for name, group in by_tensor.items():
        tensor = checkpoint.load_tensor(name).clone(memory_format=torch.contiguous_format)
        intended, kept = 0.0, 0.0
        for edit in group:
            rows = edit.slice.read(tensor, edit.neurons)
            edit.original = rows.clone(memory_format=torch.contiguous_format)
            delta = edit.rows_delta
            new = apply_rows(rows, delta, tensor.dtype)
            realised = new.float() - rows.float()
            intended += float((delta.double() ** 2).sum())
            kept += float((realised.double() * delta.double()).sum())
            edit.slice.write(tensor, edit.neurons, new)
        replacements[name] = tensor
        retention[name] = kept / intended if intended > 0 else 1.0
    return WriteBack(replacements, retention)


@dataclass
class EditDelta:
    edits: list[SliceEdit]
    grams: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> harmless Gram (float64)
    gram_tokens: int = 0
    base_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {}
        slices = []
        for i, edit in enumerate(self.edits):
            if edit.original is None:
                raise ValueError("write_back() records the original rows; call it before saving the delta")
            # Copies: slices of one solve share factors, and safetensors refuses shared storage.
            tensors[f"edit.{i}.neurons"] = edit.neurons.to(torch.int64).clone(
                memory_format=torch.contiguous_format
            )
            tensors[f"edit.{i}.a"] = edit.a.float().clone(memory_format=torch.contiguous_format)
            tensors[f"edit.{i}.b"] = edit.b.float().clone(memory_format=torch.contiguous_format)
            tensors[f"edit.{i}.original"] = edit.original.clone(memory_format=torch.contiguous_format)
            slices.append(
                {
                    "layer": edit.layer,
                    "projection": edit.projection,
                    "tensor": edit.slice.tensor,
                    "axis": edit.slice.axis,
                    "offset": edit.slice.offset,
                    "key_axis": edit.key_axis,
                    # Written only when False: deltas without chains stay byte-identical to earlier ones.
                    **({} if edit.leak_checked else {"leak_checked": False}),
                }
            )
        for layer, gram in self.grams.items():
            tensors[f"gram.{layer}"] = gram.to(torch.float64).contiguous()
        meta = {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "slices": slices,
            "gram_tokens": self.gram_tokens,
            "base_fingerprint": self.base_fingerprint,
            "extra": self.extra,
        }
        return save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})

    @classmethod
    def load(cls, path: Path) -> EditDelta:
        if not path.is_file():
            raise SparseEditError(f"{path}: missing; is this a folder written by sparse-edit apply?")
        meta = read_metadata(path)
        if not meta or meta.get("kind") != KIND:
            raise SparseEditError(f"{path}: not a sparse-edit delta file")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise SparseEditError(f"{path}: delta schema {meta.get('schema_version')} is not supported")
        try:
            tensors = load_file(str(path))
            edits = [
                SliceEdit(
                    layer=int(item["layer"]),
                    projection=item["projection"],
                    slice=NeuronSlice(item["tensor"], int(item["axis"]), int(item["offset"])),
                    neurons=tensors[f"edit.{i}.neurons"],
                    a=tensors[f"edit.{i}.a"],
                    b=tensors[f"edit.{i}.b"],
                    key_axis=item["key_axis"],
                    original=tensors[f"edit.{i}.original"],
                    leak_checked=bool(item.get("leak_checked", True)),
                )
                for i, item in enumerate(meta["slices"])
            ]
            grams = {int(name.split(".")[1]): value for name, value in tensors.items() if name.startswith("gram.")}
            return cls(edits, grams, int(meta["gram_tokens"]), meta["base_fingerprint"], meta.get("extra", {}))
        except (KeyError, TypeError, ValueError, SafetensorError) as exc:
            # Everything read above comes from the file: any of these means it is damaged.
            raise SparseEditError(f"{path}: damaged delta file ({type(exc).__name__}: {exc})") from None


def slice_energies(
    edit: SliceEdit, rows: torch.Tensor, delta_rows: torch.Tensor, gram: torch.Tensor
) -> tuple[float, float]:
    """(‖X_safe ΔW‖², ‖X_safe W‖²) for one slice, with G = X_safeᵀ X_safe over the edit's keys."""
    gram = gram.to(torch.float64)
    if edit.key_axis == "columns":  # keys multiply the rows' columns: X Wᵀ
        return float(torch.trace(delta_rows @ gram @ delta_rows.T)), float(torch.trace(rows @ gram @ rows.T))
    return float(torch.trace(delta_rows.T @ gram @ delta_rows)), float(torch.trace(rows.T @ gram @ rows))
