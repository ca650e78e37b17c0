"""GGUF in, GGUF out: the edit written into a copy of the source ``.gguf``, verified and reverted there.

``apply --model model.gguf -o patched.gguf`` computes the edit on the dequantized model as usual,
then writes ``patched.gguf`` (every other tensor's bytes and every metadata key kept; the hashes
of the delta and manifest under ``sparse_edit.*`` keys) and, beside it, ``patched.gguf.sparse_edit/``
with the manifest, the delta, the model card and the edited tensors' original bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save as save_numpy

from sparse_edit.architectures import Family, family_for_model_type
from sparse_edit.edit.delta import EditDelta, apply_rows
from sparse_edit.edit.manifest_schema import read_manifest
from sparse_edit.edit.verify import VerifyReport, manifest_mismatches
from sparse_edit.errors import SparseEditError
from sparse_edit.io import gguf_file
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.destination import check_output
from sparse_edit.io.files import file_sha256
from sparse_edit.io.gguf import KEY_PREFIX
from sparse_edit.io.gguf import read as read_gguf
from sparse_edit.io.layout import DELTA_FILE, MANIFEST_FILE, META_KEY
from sparse_edit.io.staging import staged_folder
from sparse_edit.version import __version__

SIDECAR_SUFFIX = ".sparse_edit"
PATCHED_SHA_KEY = "patched_sha256"
ORIGINALS_FILE = "gguf_originals.safetensors"
# Largest deviation of a written value from the intended one, relative to the row's largest |value|.
TOLERANCE = {
    **{"F32": 1e-6, "F16": 1e-3, "BF16": 8e-3, "Q8_0": 1e-2},
    **{"Q5_0": 7e-2, "Q5_1": 7e-2, "Q4_0": 0.15, "Q4_1": 0.15},
}


def is_gguf(path: Path | str) -> bool:
    return Path(str(path)).suffix == ".gguf"


def sidecar(patched: Path) -> Path:
    return patched.with_name(patched.name + SIDECAR_SUFFIX)


def source_gguf(model: Path) -> Path:
    """The GGUF file a --model value names (a .gguf path or a zoo: model)."""
    from sparse_edit.io.model_path import ZOO_PREFIX

    if str(model).startswith(ZOO_PREFIX):
        from sparse_edit.io.zoo import gguf_file as zoo_gguf

        return zoo_gguf(str(model)[len(ZOO_PREFIX) :])
    if not is_gguf(model):
        raise SparseEditError(f"--output *.gguf: --model {model} is not a .gguf file; GGUF out needs GGUF in")
    return Path(model)


def check_gguf_source(model: Path, output: Path) -> None:
    """Before any work: a ``.gguf`` output needs a GGUF model to patch (a .gguf file or a zoo: model)."""
    from sparse_edit.io.model_path import ZOO_PREFIX

    if is_gguf(output) and not str(model).startswith(ZOO_PREFIX):
        source_gguf(model)


def write_gguf_edit(
    model: Path,
    checkpoint: Checkpoint,
    output: Path,
    replacements: Mapping[str, torch.Tensor],
    extra_files: Mapping[str, bytes],
    overwrite: bool,
) -> None:
    """The patched GGUF at ``output`` and its sidecar folder, each staged and renamed into place."""
    source = source_gguf(model)
    values = {}
    for name, tensor in replacements.items():
        target = checkpoint.family.gguf_name(name)
        if target is None:
            raise SparseEditError(
                f"--output {output}: GGUF output supports the MLP tensors of families with separate gate, up and "
                f"down projections; {name} ({checkpoint.family.name}) has no GGUF counterpart"
            )
        values[target] = tensor.detach().to(torch.float32).numpy()
    side = sidecar(output)
    check_output(side, "apply", [("--model", source)], overwrite, flag="--output (sidecar)")
    metadata = {
        "tool_version": __version__,
        "delta_sha256": hashlib.sha256(extra_files[DELTA_FILE]).hexdigest(),
        "manifest_sha256": hashlib.sha256(extra_files[MANIFEST_FILE]).hexdigest(),
    }
    with staged_folder(side, overwrite, "apply") as staging:
        for relative, content in extra_files.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_bytes(content)
        replaced = gguf_file.write_patched(source, output, values, metadata)
        originals = {item.name: item.original for item in replaced}
        types = {item.name: {"original": item.original_type, "written": item.written_type} for item in replaced}
        # The patched file's own hash: revert refuses a file another tool changed since.
        recorded = {META_KEY: json.dumps(types, sort_keys=True), PATCHED_SHA_KEY: file_sha256(output)}
        (staging / ORIGINALS_FILE).write_bytes(save_numpy(originals, metadata=recorded))


def _originals(patched: Path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]]]:
    path = sidecar(patched) / ORIGINALS_FILE
    if not path.is_file():
        raise SparseEditError(f"{path}: missing; is {patched} a file written by sparse-edit apply?")
    with safe_open(str(path), framework="numpy") as handle:
        recorded = handle.metadata() or {}
    return load_numpy(str(path)), json.loads(recorded.get(META_KEY, "{}"))


def _check_unchanged(patched: Path) -> None:
    """Refuse a patched file another tool changed since apply wrote it: reverting it would not give the source."""
    with safe_open(str(sidecar(patched) / ORIGINALS_FILE), framework="numpy") as handle:
        expected = (handle.metadata() or {}).get(PATCHED_SHA_KEY)  # absent in sidecars older than it
    if expected is not None and (actual := file_sha256(patched)) != expected:
        raise SparseEditError(
            f"{patched}: changed since sparse-edit apply wrote it (sha256 {actual[:12]}, apply wrote "
            f"{expected[:12]}); reverting it would not give back the source file, so revert an unchanged copy"
        )


def _check_sidecar(patched: Path, reader: Any) -> tuple[EditDelta, list[str]]:
    """The delta, and where the sidecar disagrees with itself or with the patched file's metadata."""
    side = sidecar(patched)
    delta = EditDelta.load(side / DELTA_FILE)
    manifest, problem = read_manifest(side)
    problems = manifest_mismatches(manifest, delta, side) if manifest is not None else [str(problem)]
    field = reader.fields.get(KEY_PREFIX + "delta_sha256")
    recorded = field.contents() if field is not None else None
    if recorded != hashlib.sha256((side / DELTA_FILE).read_bytes()).hexdigest():
        problems.append("the patched file's sparse_edit.delta_sha256 is not the delta's")
    return delta, problems


def verify_gguf(base_path: Path, patched: Path, run_forward: bool = True) -> VerifyReport:
    """The checks of ``verify`` for a patched GGUF file against its source GGUF."""
    report = VerifyReport()
    base, edited = read_gguf(source_gguf(base_path)), read_gguf(patched)
    delta, problems = _check_sidecar(patched, edited)
    report.add("manifest", not problems, "; ".join(problems) or "the sidecar and the file's metadata agree")
    originals, types = _originals(patched)
    base_tensors = {t.name: t for t in base.tensors}
    edited_tensors = {t.name: t for t in edited.tensors}
    report.add(
        "layout",
        list(base_tensors) == list(edited_tensors),
        "same tensors in the same order" if list(base_tensors) == list(edited_tensors) else "tensors differ",
    )
    if list(base_tensors) != list(edited_tensors):
        return report
    changed = [n for n, t in base_tensors.items() if n not in types and not _same_bytes(t, edited_tensors[n])]
    report.add(
        "untouched",
        not changed,
        f"{len(base_tensors) - len(types)} tensors outside the plan are byte-identical"
        if not changed
        else f"{len(changed)} unplanned tensor(s) changed, first {changed[0]}",
    )
    kept = [
        key
        for key, field in base.fields.items()
        if not key.startswith("GGUF.")
        and (key not in edited.fields or edited.fields[key].contents() != field.contents())
    ]
    report.add("metadata", not kept, "every metadata key kept" if not kept else f"{kept[0]} differs")
    report.add(
        "original bytes",
        all(np.array_equal(originals[n], np.asarray(base_tensors[n].data)) for n in types),
        "the stored original bytes equal the source's (revert is exact)",
    )
    architecture = base.fields["general.architecture"].contents()
    family = family_for_model_type(architecture, where=f"{base_path}: general.architecture")
    worst, ok = _check_values(delta, base_tensors, edited_tensors, types, family)
    report.add(
        "matches delta", ok, f"largest deviation {worst:.3g} of the row's scale (tolerance by written type)"
    )
    if run_forward:
        report.add("loads", *_forward(patched))
    return report


def _same_bytes(a: Any, b: Any) -> bool:
    return a.tensor_type == b.tensor_type and np.array_equal(np.asarray(a.data), np.asarray(b.data))


def _check_values(
    delta: EditDelta,
    base: dict[str, Any],
    edited: dict[str, Any],
    types: dict[str, dict[str, str]],
    family: Family,
) -> tuple[float, bool]:
    """Every edited tensor equals its source plus the delta, within the rounding of the type it was written in."""
    by_tensor: dict[str, list[Any]] = {}
    for edit in delta.edits:
        by_tensor.setdefault(edit.slice.tensor, []).append(edit)
    worst, ok = 0.0, True
    for hf_name, edits in by_tensor.items():
        gguf_name = family.gguf_name(hf_name)
        if gguf_name is None or gguf_name not in types:
            return float("inf"), False
        expected = torch.from_numpy(gguf_file.dequantized(base[gguf_name]).copy())
        for edit in edits:
            rows = edit.slice.read(expected, edit.neurons)
            edit.slice.write(expected, edit.neurons, apply_rows(rows, edit.rows_delta, torch.float32))
        actual = torch.from_numpy(gguf_file.dequantized(edited[gguf_name]).copy())
        scale = expected.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
        deviation = float(((actual - expected).abs() / scale).max())
        worst = max(worst, deviation)
        ok &= deviation <= TOLERANCE.get(types[gguf_name]["written"], 0.0)
    return worst, ok


def _forward(patched: Path) -> tuple[bool, str]:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            patched.parent, gguf_file=patched.name, dtype=torch.float32, trust_remote_code=False
        ).eval()
        with torch.inference_mode():
            logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    except (OSError, ValueError, RuntimeError) as exc:
        return False, f"transformers could not load or run it: {str(exc).splitlines()[0]}"
    finite = bool(torch.isfinite(logits).all())
    return finite, "loads with transformers' GGUF loader; logits are finite" if finite else "non-finite logits"


def revert_gguf(patched: Path, output: Path, overwrite: bool) -> list[str]:
    """The source GGUF's tensors back, byte for byte, and sparse-edit's metadata keys removed."""
    check_output(output, "revert", [("EDITED", patched), ("EDITED", sidecar(patched))], overwrite)
    _, problems = _check_sidecar(patched, read_gguf(patched))
    if problems:
        raise SparseEditError(f"{patched}: {problems[0]}; the stored originals cannot be trusted to revert")
    originals, types = _originals(patched)
    _check_unchanged(patched)
    gguf_file.restore(
        patched, output, {name: (originals[name], kinds["original"]) for name, kinds in types.items()}
    )
    return sorted(types)
