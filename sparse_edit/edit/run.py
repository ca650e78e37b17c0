"""``sparse-edit apply``: features -> closed-form solve per candidate -> choice on a dev split -> write."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from sparse_edit.console import Reporter
from sparse_edit.edit.anchor_prompts import AnchorPrompts
from sparse_edit.edit.anchors import Anchors, add_replies, build_anchors, select_anchor_prompts
from sparse_edit.edit.candidates import Candidate, build_candidates, stored_dtypes_for
from sparse_edit.edit.delta import EditDelta, write_back
from sparse_edit.edit.dev_choice import choose, format_table, measure_candidates
from sparse_edit.edit.estimate import count_work, describe, time_first_batch
from sparse_edit.edit.gguf_output import check_gguf_source, is_gguf, write_gguf_edit
from sparse_edit.edit.manifest import build_manifest, checked, model_card
from sparse_edit.edit.manifest_schema import Manifest
from sparse_edit.edit.plan import Plan, check_gate_model, check_settings, make_plan, rank_by_attribution
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import DELTA_FILE, MANIFEST_FILE, MODEL_CARD_FILE
from sparse_edit.io.writer import write_checkpoint
from sparse_edit.model.loading import LoadedModel, load_model
from sparse_edit.neurons.artifact import LocateArtifact
from sparse_edit.options import ApplyOptions, ModelOptions
from sparse_edit.runner import Steps


@dataclass
class SolvedEdit:
    """What apply's work leaves for its write: the candidates solved and measured, and the one chosen."""

    checkpoint: Checkpoint
    candidates: list[Candidate]
    chosen: Candidate
    anchor_counts: dict[str, int]
    low_langs: list[str]


def check_apply(options: ApplyOptions) -> None:
    """What apply can refuse before any work (the settings themselves were validated with the options)."""
    check_gguf_source(options.model, options.output)


def run_apply(options: ApplyOptions, reporter: Reporter) -> dict[str, Any]:
    """Check, solve and write without claiming ``options.output``: for a caller that owns the destination
    already (tune writes its chosen edit inside its own staged folder). Returns the manifest."""
    check_apply(options)
    return write_solved(options, solve_edit(options, None, reporter), reporter)


def solve_edit(options: ApplyOptions, _checked: None, reporter: Reporter) -> SolvedEdit:
    """Plan, solve the candidates and choose one on the dev split (apply's work; nothing written)."""
    inputs = load_edit_inputs(options, reporter)
    artifact, loaded, low_langs = inputs.artifact, inputs.loaded, inputs.low_langs
    checkpoint = loaded.checkpoint
    plan = make_plan(options, artifact, loaded.num_layers, low_langs)
    for name in plan.parts:
        plan.strategy(name).check(checkpoint)  # fail before any forward pass
    anchors = build_anchors(options, loaded, inputs.prompts, reporter, replies=False)
    announce_cost(loaded, anchors, plan, options, reporter)
    anchors = add_replies(anchors, loaded, options, reporter)
    if options.neuron_score == "attribution":
        rank_by_attribution(loaded, anchors, plan, options, reporter)
    stored_dtypes: dict[str, torch.dtype] = {}
    candidates = build_candidates(loaded, anchors, plan, options, stored_dtypes, reporter)
    for candidate in candidates:
        stored_dtypes_for(checkpoint, candidate.edits, stored_dtypes)
    if anchors.low_dev or anchors.safe_dev:
        measure_candidates(loaded, candidates, anchors, stored_dtypes, options, reporter)
    chosen = choose(candidates, options.kl_budget, reporter) if len(candidates) > 1 else candidates[0]
    reporter.info(format_table(candidates, chosen))
    return SolvedEdit(checkpoint, candidates, chosen, anchors.counts(), low_langs)


def apply_steps() -> Steps[ApplyOptions, None, SolvedEdit, Manifest]:
    """apply's steps for ``run_command``: the result is the manifest written, as its model."""

    def write(options: ApplyOptions, solved: SolvedEdit, reporter: Reporter) -> Manifest:
        return Manifest.model_validate(write_solved(options, solved, reporter))

    return Steps("apply", check_apply, solve_edit, write)


def write_solved(options: ApplyOptions, solved: SolvedEdit, reporter: Reporter) -> dict[str, Any]:
    """Apply's write: the chosen edit, staged; returns the manifest written."""
    return write_edit(
        options,
        solved.checkpoint,
        solved.candidates,
        solved.chosen,
        solved.anchor_counts,
        solved.low_langs,
        reporter,
    )


@dataclass
class EditInputs:
    artifact: LocateArtifact
    loaded: LoadedModel
    low_langs: list[str]
    prompts: AnchorPrompts


def load_edit_inputs(options: ApplyOptions, reporter: Reporter) -> EditInputs:
    """The locate artifact, the anchor prompts and the model (checked against the artifact): every setting
    that the artifact and the prompt files can check is checked before the model is loaded."""
    artifact = LocateArtifact.load(options.artifact)
    check_settings(options, artifact)
    ref = options.reference_lang
    low_langs = [lang for lang in (options.low_langs or artifact.languages) if lang != ref]
    if not low_langs:
        raise SparseEditError("--low-langs: no low-resource language to edit for (all equal the reference)")
    prompts = select_anchor_prompts(options, low_langs, reporter)
    loaded = load_model(ModelOptions.of(options))
    where = f"--artifact {options.artifact}"
    for warning in artifact.check_model(loaded.checkpoint, where, options.allow_other_weights):
        reporter.warn(warning)
    check_gate_model(options, loaded.checkpoint)
    return EditInputs(artifact, loaded, low_langs, prompts)


def announce_cost(
    loaded: LoadedModel, anchors: Anchors, plan: Plan, options: ApplyOptions, reporter: Reporter
) -> None:
    """Say before the long work how long it will take (passes and replies, priced on a first batch)."""
    work = count_work(
        vars(anchors),
        plan.layer_sets,
        len(plan.strategies),
        attribution=options.neuron_score == "attribution",
        ceiling=options.ceiling,
        dev_generate=options.dev_generate,
        harmless_reply_tokens=options.harmless_reply_tokens,
        num_layers=loaded.num_layers,
    )
    tokens = max(options.dev_generate, options.harmless_reply_tokens)
    per_pass, per_token = time_first_batch(loaded, anchors.low_train, options.batch_size, tokens)
    reporter.info(describe(work, per_pass, per_token))


def write_edit(
    options: ApplyOptions,
    checkpoint: Checkpoint,
    candidates: list[Candidate],
    chosen: Candidate,
    anchor_counts: dict[str, int],
    low_langs: list[str],
    reporter: Reporter,
) -> dict[str, Any]:
    """The chosen edit as an edited folder (or a patched GGUF file) with its delta, manifest and card."""
    written = write_back(checkpoint, chosen.edits)
    chosen.diagnostics["retention"] = written.retention
    for name, kept in written.retention.items():
        if kept < 0.9:
            reporter.warn(
                f"{name}: only {kept:.1%} of the update survived the cast to {checkpoint.tensors[name].dtype}"
            )
    delta_bytes = EditDelta(chosen.edits, chosen.grams, chosen.gram_tokens, checkpoint.fingerprint()).to_bytes()
    table = [
        {"candidate": c.label, "strategy": c.strategy, "layers": list(c.layers), **c.diagnostics}
        for c in candidates
    ]
    manifest = build_manifest(options, checkpoint, chosen, table, delta_bytes, low_langs)
    manifest["anchors"] = anchor_counts
    checked(manifest)
    extra = {
        DELTA_FILE: delta_bytes,
        MANIFEST_FILE: (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
        MODEL_CARD_FILE: model_card(manifest).encode(),
    }
    if is_gguf(options.output):
        write_gguf_edit(options.model, checkpoint, options.output, written.replacements, extra, options.overwrite)
    else:
        write_checkpoint(
            checkpoint,
            options.output,
            written.replacements,
            command="apply",
            overwrite=options.overwrite,
            extra_files=extra,
            warn=reporter.warn,
        )
    return manifest
