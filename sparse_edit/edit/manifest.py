"""The manifest and the model card an edited folder carries: every setting, number and version of the edit."""

from __future__ import annotations

import hashlib
import json
import platform
from typing import Any

import torch

from sparse_edit.edit.candidates import Candidate
from sparse_edit.edit.dev_choice import SELECTION_RULE
from sparse_edit.edit.manifest_schema import Manifest
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import MANIFEST_KIND
from sparse_edit.neurons.artifact import read_artifact_metadata, weights_check
from sparse_edit.options import ApplyOptions
from sparse_edit.version import __version__


def build_manifest(
    options: ApplyOptions,
    checkpoint: Checkpoint,
    chosen: Candidate,
    table: list[dict[str, Any]],
    delta_bytes: bytes,
    low_langs: list[str],
) -> dict[str, Any]:
    import safetensors
    import transformers

    changed = sum(edit.changed_parameters for edit in chosen.edits)
    total = checkpoint.parameter_count
    manifest = {
        "kind": MANIFEST_KIND,
        "schema_version": 1,
        "tool_version": __version__,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
        },
        # Where the output went is not an input of the edit; leaving it out keeps reruns byte-identical.
        "settings": options.model_dump(mode="json", exclude={"output", "overwrite"}),
        "seed": options.seed,
        "base": {
            "path": str(checkpoint.path),
            "fingerprint": checkpoint.fingerprint(),
            "weights_sha256": checkpoint.weights_sha256(),
        },
        "artifact": {
            "path": str(options.artifact),
            "sha256": hashlib.sha256(options.artifact.read_bytes()).hexdigest(),
            # matched, overridden (--allow-other-weights) or not recorded (an artifact older than weight hashes)
            "weights_check": weights_check(
                read_artifact_metadata(options.artifact)["model"], checkpoint, options.allow_other_weights
            ),
        },
        "delta_sha256": hashlib.sha256(delta_bytes).hexdigest(),
        "strategy": chosen.strategy,
        "layers": list(chosen.layers),
        "selection_rule": SELECTION_RULE if len(table) > 1 else "given by --strategy and --layer",
        "low_langs": low_langs,
        "edits": [
            {
                "tensor": edit.slice.tensor,
                "layer": edit.layer,
                "projection": edit.projection,
                "neurons": int(edit.neurons.numel()),
                "rank": int(edit.a.shape[1]),
                "changed_parameters": edit.changed_parameters,
                "delta_norm": float(edit.rows_delta.norm()),
            }
            for edit in chosen.edits
        ],
        "changed_parameters": changed,
        "changed_fraction": changed / total if total else 0.0,
        "diagnostics": chosen.diagnostics,
        "candidates": table,
    }
    return manifest


def checked(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` once it matches its schema: one that does not is a bug, not a result to write."""
    Manifest.model_validate(manifest)
    return manifest


def model_card(manifest: dict[str, Any]) -> str:
    edits = "\n".join(
        f"- `{e['tensor']}`: {e['neurons']} neurons ({e['projection']}), rank {e['rank']}, ‖ΔW‖ = {e['delta_norm']:.4g}"
        for e in manifest["edits"]
    )
    diag = manifest["diagnostics"]
    layers = ", ".join(map(str, manifest["layers"]))
    lines = [
        "---",
        f"base_model: {json.dumps(manifest['base']['path'])}",
        "tags:",
        "- sparse-edit",
        "- safety",
        "---",
        "",
        f"# Edited with sparse-edit {manifest['tool_version']}",
        "",
        f"A closed-form, low-rank edit of layer(s) {layers} ({manifest['strategy']} strategy) that moves harmful "
        f"prompts in {', '.join(manifest['low_langs'])} toward the {manifest['settings']['reference_lang']} safety "
        "pattern while a null-space term keeps harmless inputs unchanged. Nothing else was changed.",
        "",
        edits,
        "",
        f"Changed parameters: {manifest['changed_parameters']} ({manifest['changed_fraction']:.4%} of the model).",
        "",
        "| diagnostic (dev split unless marked train) | value |",
        "|---|---|",
    ]
    for key in (
        "fit_train",
        "fit_dev",
        "leak_train",
        "leak_dev",
        "relative_norm",
        "refusal_gain_harmful",
        "refusal_gain_harmless",
        "kl_harmless",
    ):
        if isinstance(diag.get(key), float):
            lines.append(f"| {key} | {diag[key]:.4g} |")
    lines += [
        "",
        "`sparse_edit/manifest.json` holds every setting and number; `sparse_edit/delta.safetensors` the update.",
    ]
    return "\n".join(lines) + "\n"
