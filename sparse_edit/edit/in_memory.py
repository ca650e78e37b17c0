"""An edit applied to, or taken back from, a model already loaded in memory: no checkpoint is written.

The edited folder's delta (``sparse_edit/delta.safetensors``) holds every edited block's original rows and
its change, so applying is ``rows + a @ b`` cast to the parameter's dtype and reverting writes the original
rows back. Both first check that the rows they start from are the ones the delta expects (the base rows
before applying, the edited rows before reverting), so an edit never lands on a model it was not made for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sparse_edit.edit.delta import EditDelta, SliceEdit, apply_rows
from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import DELTA_FILE


def load_delta(edited: Path) -> EditDelta:
    """The delta of an edited folder (or the delta file itself)."""
    edited = Path(edited)
    return EditDelta.load(edited / DELTA_FILE if edited.is_dir() else edited)


def _blocks(model: torch.nn.Module, delta: EditDelta, where: str) -> list[tuple[torch.Tensor, SliceEdit]]:
    found = []
    for edit in delta.edits:
        try:
            parameter = model.get_parameter(edit.slice.tensor)
        except AttributeError:
            raise SparseEditError(
                f"{where}: the model has no parameter {edit.slice.tensor}; it is not the model this edit was made for"
            ) from None
        found.append((parameter.data, edit))
    return found


def _rows(data: torch.Tensor, edit: SliceEdit) -> torch.Tensor:
    return edit.slice.read(data, edit.neurons.to(data.device))


def _edited_rows(data: torch.Tensor, edit: SliceEdit) -> torch.Tensor:
    assert edit.original is not None
    original = edit.original.to(data.device)
    return apply_rows(original, edit.rows_delta, original.dtype).to(data.dtype)


def _require(data: torch.Tensor, edit: SliceEdit, expected: torch.Tensor, where: str, state: str) -> None:
    if not torch.equal(_rows(data, edit), expected):
        raise SparseEditError(
            f"{where}: {edit.slice.tensor} does not hold the {state} rows this edit records; the loaded model is not "
            "the one it was made for (or is already edited / reverted)"
        )


def apply_to_model(model: torch.nn.Module, edited: Path) -> EditDelta:
    """Apply the edit of the folder ``edited`` to ``model``'s parameters in place (rounded as the written
    checkpoint is); refused, with nothing changed, unless every block holds the base rows the edit records."""
    where = f"edit {edited}"
    delta = load_delta(edited)
    blocks = _blocks(model, delta, where)
    with torch.no_grad():
        for data, edit in blocks:
            assert edit.original is not None
            _require(data, edit, edit.original.to(data.device, data.dtype), where, "base")
        for data, edit in blocks:
            edit.slice.write(data, edit.neurons.to(data.device), _edited_rows(data, edit))
    return delta


def revert_on_model(model: torch.nn.Module, edited: Path) -> EditDelta:
    """Take the edit of the folder ``edited`` back from ``model`` in place: the original rows, exactly; refused,
    with nothing changed, unless every block holds the edited rows."""
    where = f"edit {edited}"
    delta = load_delta(edited)
    blocks = _blocks(model, delta, where)
    with torch.no_grad():
        for data, edit in blocks:
            _require(data, edit, _edited_rows(data, edit), where, "edited")
        for data, edit in reversed(blocks):
            assert edit.original is not None
            edit.slice.write(data, edit.neurons.to(data.device), edit.original.to(data.device, data.dtype))
    return delta


@contextmanager
def edited_model(model: Any, edited: Path) -> Iterator[Any]:
    """``model`` with the edit applied for the duration of the block, reverted after it (also on error)."""
    apply_to_model(model, edited)
    try:
        yield model
    finally:
        revert_on_model(model, edited)
