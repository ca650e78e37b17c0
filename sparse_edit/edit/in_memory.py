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


def _blocks(
    model: torch.nn.Module, delta: EditDelta, where: str
) -> list[tuple[torch.Tensor, SliceEdit, torch.Tensor]]:
    """(parameter data, edit, its original rows) per edited block; refused when the model lacks a parameter or
    the delta keeps no original rows."""
    found = []
    for edit in delta.edits:
        if edit.original is None:
            raise SparseEditError(f"{where}: the delta keeps no original rows of {edit.slice.tensor}")
        try:
            parameter = model.get_parameter(edit.slice.tensor)
        except AttributeError:
            raise SparseEditError(
                f"{where}: the model has no parameter {edit.slice.tensor}; it is not the model this edit was made for"
            ) from None
        found.append((parameter.data, edit, edit.original.to(parameter.device)))
    return found


def _move(model: torch.nn.Module, edited: Path, delta: EditDelta, forward: bool) -> None:
    """Every block from its base rows to its edited rows (``forward``) or back, after checking that each holds
    the rows it starts from: a refusal changes nothing."""
    where = f"edit {edited}"
    blocks = _blocks(model, delta, where)
    with torch.no_grad():
        states = [
            (
                data,
                edit,
                original.to(data.dtype),
                apply_rows(original, edit.rows_delta, original.dtype).to(data.dtype),
            )
            for data, edit, original in blocks
        ]
        for data, edit, base, changed in states:
            if not torch.equal(edit.slice.read(data, edit.neurons.to(data.device)), base if forward else changed):
                raise SparseEditError(
                    f"{where}: {edit.slice.tensor} does not hold the {'base' if forward else 'edited'} rows this edit "
                    "records; the loaded model is not the one it was made for (or is already edited / reverted)"
                )
        for data, edit, base, changed in states if forward else reversed(states):
            edit.slice.write(data, edit.neurons.to(data.device), changed if forward else base)


def apply_to_model(model: torch.nn.Module, edited: Path) -> EditDelta:
    """Apply the edit of the folder ``edited`` to ``model``'s parameters in place (rounded as the written
    checkpoint is); refused, with nothing changed, unless every block holds the base rows the edit records."""
    delta = load_delta(edited)
    _move(model, edited, delta, forward=True)
    return delta


def revert_on_model(model: torch.nn.Module, edited: Path) -> EditDelta:
    """Take the edit of the folder ``edited`` back from ``model`` in place: the original rows, exactly; refused,
    with nothing changed, unless every block holds the edited rows."""
    delta = load_delta(edited)
    _move(model, edited, delta, forward=False)
    return delta


@contextmanager
def edited_model(model: Any, edited: Path) -> Iterator[Any]:
    """``model`` with the edit applied for the duration of the block, reverted after it (also on error); the
    delta is read once."""
    delta = load_delta(edited)
    _move(model, edited, delta, forward=True)
    try:
        yield model
    finally:
        _move(model, edited, delta, forward=False)
