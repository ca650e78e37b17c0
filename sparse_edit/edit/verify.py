"""``sparse-edit verify BASE EDITED`` and ``sparse-edit revert``: prove or undo an edit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sparse_edit.edit.delta import EditDelta, apply_rows, slice_energies
from sparse_edit.edit.manifest_schema import Manifest, read_manifest
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import DELTA_FILE, MODEL_CARD_FILE
from sparse_edit.io.writer import write_checkpoint

# Relative tolerance for "the stored rows are what the delta says", per checkpoint dtype:
# two float rounding steps of that dtype (the add may run on another device than the original).
ROW_TOLERANCE = {torch.float32: 1e-6, torch.float16: 2 * 2**-10, torch.bfloat16: 2 * 2**-7, torch.float64: 1e-12}
LEAK_TOLERANCE = 0.1  # relative difference allowed between recomputed and recorded leak


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    checks: list[Check] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.checks.append(Check(name, ok, detail))
        return ok

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def failed(self) -> list[str]:
        return [check.name for check in self.checks if not check.ok]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checks": [check.__dict__ for check in self.checks],
            "numbers": self.numbers,
        }


def _planned_mask(shape: tuple[int, ...], delta: EditDelta, name: str) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    for edit in delta.edits:
        if edit.slice.tensor != name:
            continue
        index = edit.neurons + edit.slice.offset
        if edit.slice.axis == 0:
            mask[index] = True
        else:
            mask[:, index] = True
    return mask


def verify(base_path: Path, edited_path: Path, run_forward: bool = True) -> VerifyReport:
    """Every check of an edited folder against its base, its delta and its manifest."""
    from sparse_edit.io.model_path import ensure_hf_folder

    base = Checkpoint.open(ensure_hf_folder(base_path))
    edited = Checkpoint.open(edited_path)
    report = VerifyReport()
    delta = EditDelta.load(edited_path / DELTA_FILE)
    manifest, problem = read_manifest(edited_path)
    problems = manifest_mismatches(manifest, delta, edited_path) if manifest is not None else [str(problem)]
    report.add(
        "manifest",
        not problems,
        "the manifest describes the delta file and its hash matches" if not problems else "; ".join(problems),
    )
    if not _check_layout(report, base, edited, delta):
        return report
    energies = _check_rows(report, base, edited, delta)
    _check_leak(report, energies, manifest.diagnostics.get("leak_train") if manifest is not None else None)
    if run_forward:
        report.add("loads", *_forward_check(edited_path))
    return report


def _check_layout(report: VerifyReport, base: Checkpoint, edited: Checkpoint, delta: EditDelta) -> bool:
    """Same tensors and the delta's base; returns whether the row checks can run."""
    layout_base = {n: (i.shape, i.dtype) for n, i in base.tensors.items()}
    layout_edited = {n: (i.shape, i.dtype) for n, i in edited.tensors.items()}
    differ = sorted(set(layout_base.items()) ^ set(layout_edited.items()))
    report.add(
        "layout",
        not differ,
        "same tensor names, shapes and dtypes" if not differ else f"differs at {differ[0][0]}",
    )
    same_base = delta.base_fingerprint == base.fingerprint()
    report.add(
        "base",
        same_base,
        "the delta was made from this base" if same_base else "the delta was made from another checkpoint",
    )
    if differ:
        return False
    planned = {edit.slice.tensor for edit in delta.edits}
    unplanned_changes = [
        name for name in sorted(base.tensors) if name not in planned and not _same_tensor(base, edited, name)
    ]
    report.add(
        "untouched",
        not unplanned_changes,
        f"{len(base.tensors) - len(planned)} tensors outside the plan are identical"
        if not unplanned_changes
        else f"{len(unplanned_changes)} unplanned tensor(s) changed, first {unplanned_changes[0]}",
    )
    return True


def _check_rows(
    report: VerifyReport, base: Checkpoint, edited: Checkpoint, delta: EditDelta
) -> dict[int, tuple[float, float]]:
    """Only the planned rows changed, each as the delta says; returns per layer (moved, base) harmless energy."""
    outside_ok, rows_ok, original_ok = True, True, True
    worst = 0.0
    energies: dict[int, tuple[float, float]] = {}
    for name in sorted({edit.slice.tensor for edit in delta.edits}):
        before, after = base.load_tensor(name), edited.load_tensor(name)
        mask = _planned_mask(tuple(before.shape), delta, name)
        outside_ok &= bool(torch.equal(before[~mask], after[~mask]))
        for edit in (e for e in delta.edits if e.slice.tensor == name):
            rows = edit.slice.read(before, edit.neurons)
            stored = edit.slice.read(after, edit.neurons)
            expected = apply_rows(rows, edit.rows_delta, before.dtype)
            error = float(
                ((stored.float() - expected.float()).abs() / expected.float().abs().clamp(min=1e-6)).max()
            )
            worst = max(worst, error)
            rows_ok &= error <= ROW_TOLERANCE.get(before.dtype, 1e-6) or torch.equal(stored, expected)
            original_ok &= edit.original is not None and torch.equal(edit.original, rows)
            gram = delta.grams.get(edit.layer)
            if gram is not None and edit.leak_checked:
                moved, base_energy = slice_energies(edit, rows.double(), stored.double() - rows.double(), gram)
                previous = energies.get(edit.layer, (0.0, 0.0))
                energies[edit.layer] = (previous[0] + moved, previous[1] + base_energy)
    report.add(
        "planned rows only",
        outside_ok,
        "only the planned rows changed" if outside_ok else "rows outside the plan changed",
    )
    report.add("matches delta", rows_ok, f"largest relative deviation {worst:.3g}")
    report.add(
        "original rows",
        original_ok,
        "the delta's original rows equal the base (revert is exact)"
        if original_ok
        else "the delta's original rows differ from the base",
    )
    return energies


def _check_leak(report: VerifyReport, energies: dict[int, tuple[float, float]], recorded: Any) -> None:
    """The harmless leak recomputed from the weights and the stored Grams, against the manifest's."""
    # Leak per layer over all its slices (as apply computes it), worst layer reported.
    leaks = {layer: (moved / base) ** 0.5 if base > 0 else 0.0 for layer, (moved, base) in energies.items()}
    if not leaks:
        return
    leak = max(leaks.values())
    report.numbers["leak_recomputed"] = leak
    if isinstance(recorded, float):
        close = abs(leak - recorded) <= LEAK_TOLERANCE * max(recorded, 1e-4)
        report.add(
            "leak", close, f"harmless leak {leak:.4g} recomputed from the weights (manifest: {recorded:.4g})"
        )
    else:
        report.add("leak", True, f"harmless leak {leak:.4g} recomputed from the weights")


def _same_tensor(base: Checkpoint, edited: Checkpoint, name: str) -> bool:
    return torch.equal(base.load_tensor(name), edited.load_tensor(name))


def _forward_check(folder: Path) -> tuple[bool, str]:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False).eval()
        with torch.inference_mode():
            logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    except (OSError, ValueError, RuntimeError) as exc:
        return False, f"transformers could not load or run it: {str(exc).splitlines()[0]}"
    finite = bool(torch.isfinite(logits).all())
    return (
        finite,
        "loads with transformers; forward pass logits are finite"
        if finite
        else "forward pass gave non-finite logits",
    )


def manifest_mismatches(manifest: Manifest, delta: EditDelta, edited_path: Path) -> list[str]:
    """Where the manifest disagrees with the delta file it describes (empty when they agree)."""
    problems = []
    digest = hashlib.sha256((edited_path / DELTA_FILE).read_bytes()).hexdigest()
    if manifest.delta_sha256 != digest:
        problems.append("the delta file's sha256 is not the one the manifest records")
    layers = sorted({edit.layer for edit in delta.edits})
    if sorted(set(manifest.layers)) != layers:
        problems.append(f"manifest layers {manifest.layers} differ from the delta's {layers}")
    actual = [(edit.slice.tensor, edit.layer, int(edit.neurons.numel())) for edit in delta.edits]
    if [(e.tensor, e.layer, e.neurons) for e in manifest.edits] != actual:
        problems.append("the manifest's edited tensors differ from the delta's")
    changed = sum(edit.changed_parameters for edit in delta.edits)
    if manifest.changed_parameters != changed:
        problems.append(f"manifest changed_parameters {manifest.changed_parameters} != delta's {changed}")
    return problems


def revert(edited_path: Path, output: Path, overwrite: bool = False) -> list[str]:
    """Write the base checkpoint back from an edited folder and its delta (exact: original rows are stored)."""
    edited = Checkpoint.open(edited_path)
    delta = EditDelta.load(edited_path / DELTA_FILE)
    manifest, problem = read_manifest(edited_path)
    if manifest is None:
        raise SparseEditError(f"{edited_path}: {problem}; the delta cannot be checked before reverting")
    problems = manifest_mismatches(manifest, delta, edited_path)
    if problems:
        raise SparseEditError(f"{edited_path}: {problems[0]}; the delta cannot be trusted to revert")
    replacements: dict[str, torch.Tensor] = {}
    for edit in delta.edits:
        name = edit.slice.tensor
        if edit.original is None:
            raise SparseEditError(f"{edited_path / DELTA_FILE}: no original rows stored; cannot revert")
        tensor = replacements.get(name)
        if tensor is None:
            tensor = replacements[name] = edited.load_tensor(name).clone()
        edit.slice.write(tensor, edit.neurons, edit.original)
    # The model card describes the edit, so it does not belong to the restored base.
    return write_checkpoint(
        edited,
        output,
        replacements,
        command="revert",
        input_flag="EDITED",
        overwrite=overwrite,
        exclude={MODEL_CARD_FILE},
    )
