"""``sparse-edit apply``: features -> closed-form solve per candidate -> choice on a dev split -> write."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sparse_edit import __version__
from sparse_edit.architectures import Projection
from sparse_edit.config import ApplyOptions
from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.data.selection import prepare_prompts
from sparse_edit.edit.delta import EditDelta, SliceEdit, applied_in_memory, write_back
from sparse_edit.edit.estimate import count_work, describe, time_first_batch
from sparse_edit.edit.solver import SolveSettings
from sparse_edit.edit.strategies.legacy import (
    Candidate,
    LayerData,
    detector_activation,
    detector_candidate,
    edit_neurons,
    output_candidate,
    pair_rows,
    paper_candidate,
)
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import DELTA_FILE, MANIFEST_FILE, MANIFEST_KIND, MODEL_CARD_FILE
from sparse_edit.io.outputs import check_output, command_inputs
from sparse_edit.io.writer import write_checkpoint
from sparse_edit.locate.artifact import LocateArtifact
from sparse_edit.locate.neurons import jaccard
from sparse_edit.measure.attribution import attribution_scores, top_neurons
from sparse_edit.measure.patching import patched_refusal_scores
from sparse_edit.measure.probes import RefusalScores, mean, rate_gains, refusal_rates, refusal_scores, token_kl
from sparse_edit.model.batching import Encoded, encode_prompts
from sparse_edit.model.features import FeatureRequest, Features, Site, collect
from sparse_edit.model.loading import LoadedModel, load_model

SELECTION_RULE = (
    "largest selective gain (mean refusal log-odds gain on dev low-resource harmful prompts minus the gain on dev "
    "harmless prompts; with --dev-generate, the judged refusal-rate gain of generated replies on dev low-resource "
    "harmful prompts minus that on dev harmless prompts, log-odds breaking ties) among candidates whose mean "
    "harmless per-token KL is within --kl-budget; if none is, the candidate with the smallest KL"
)


def is_dev(prompt_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class Anchors:
    """Encoded prompts by role; train rows feed the solve, dev rows only the diagnostics."""

    low_train: list[Encoded]
    ref_train: list[Encoded]
    safe_train: list[Encoded]
    ref_safe_train: list[Encoded]
    low_dev: list[Encoded]
    ref_dev: list[Encoded]
    safe_dev: list[Encoded]

    def counts(self) -> dict[str, int]:
        """Prompts per role, for the manifest."""
        return {role: len(items) for role, items in vars(self).items()}


def _cap_per_language(prompts: list[Prompt], limit: int) -> list[Prompt]:
    seen: dict[str, int] = {}
    kept = []
    for prompt in prompts:
        if seen.get(prompt.lang, 0) < limit:
            kept.append(prompt)
            seen[prompt.lang] = seen.get(prompt.lang, 0) + 1
    return kept


def build_anchors(options: ApplyOptions, loaded: LoadedModel, low_langs: list[str], reporter: Reporter) -> Anchors:
    sets = prepare_prompts(options, reporter)
    ref = options.reference_lang

    def encode(prompts: list[Prompt]) -> list[Encoded]:
        return encode_prompts(loaded.tokenizer, prompts, options.system_prompt, options.max_length)

    def split(prompts: list[Prompt]) -> tuple[list[Prompt], list[Prompt]]:
        dev = [p for p in prompts if is_dev(p.id, options.dev_fraction, options.seed)]
        train = [p for p in prompts if not is_dev(p.id, options.dev_fraction, options.seed)]
        return train, _cap_per_language(dev, options.dev_limit)

    low_train, low_dev = split([p for p in sets.harmful if p.lang in low_langs])
    ref_train, ref_dev = split([p for p in sets.harmful if p.lang == ref])
    safe_train, safe_dev = split(sets.harmless)
    if not low_train:
        raise SparseEditError(f"--low-langs: no harmful training prompts in {', '.join(low_langs)}")
    if not ref_train:
        raise SparseEditError(f"--reference-lang {ref}: no harmful training prompts in that language")
    if not safe_train:
        raise SparseEditError("--harmless: no harmless training prompts left after the dev split")
    ref_safe = [p for p in safe_train if p.lang == ref]
    return Anchors(
        encode(low_train),
        encode(ref_train),
        encode(safe_train),
        encode(ref_safe),
        encode(low_dev),
        encode(ref_dev),
        encode(safe_dev),
    )


def default_candidates(num_layers: int, recommended: int | None) -> list[int]:
    low, high = num_layers // 3, max(num_layers - 2, num_layers // 3)
    spread = {round(low + (high - low) * k / 3) for k in range(4)}
    if recommended is not None:
        spread.add(recommended)
    return sorted(layer for layer in spread if 0 <= layer < num_layers)


@dataclass
class Plan:
    """What apply will try: strategies x layer sets, and the neuron set of every (strategy, layer)."""

    strategies: list[str]
    layer_sets: list[tuple[int, ...]]
    neurons: dict[tuple[str, int], torch.Tensor]
    sites: list[Site]
    notes: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)  # per-layer diagnostics


def rank_by_attribution(
    loaded: LoadedModel, anchors: Anchors, plan: Plan, options: ApplyOptions, reporter: Reporter
) -> None:
    """Replace each planned neuron set by as many neurons ranked by attribution patching.

    Records, per (strategy, layer), the overlap with the contrast set and both sets' first-order
    estimate of the patching gain (mean over training prompts of the summed scores).
    """
    scores: dict[int, torch.Tensor] = {}
    count = len(anchors.low_train)
    for (strategy, layer), contrast in list(plan.neurons.items()):
        if layer not in scores:
            scores[layer] = attribution_scores(
                loaded, anchors.low_train, anchors.ref_train, layer, options.batch_size, reporter
            )
        chosen = top_neurons(scores[layer], int(contrast.numel()))
        if not chosen.numel():
            raise SparseEditError(
                f"--neuron-score attribution: no neuron at layer {layer} raises refusal when moved toward "
                f"{options.reference_lang}; use --neuron-score contrast or another --layer"
            )
        plan.neurons[(strategy, layer)] = chosen
        plan.notes[(strategy, layer)] = {
            "jaccard_to_contrast_set": jaccard(contrast, chosen),
            "attribution_estimate": float(scores[layer][chosen].sum()) / count,
            "attribution_estimate_contrast_set": float(scores[layer][contrast].sum()) / count,
        }


def make_plan(options: ApplyOptions, artifact: LocateArtifact, num_layers: int, low_langs: list[str]) -> Plan:
    fixed = options.fixed_layers()
    layer_sets = (
        [fixed]
        if fixed
        else [
            (layer,)
            for layer in (options.candidate_layers or default_candidates(num_layers, artifact.recommended_layer))
        ]
    )
    for layers in layer_sets:
        for layer in layers:
            if not 0 <= layer < num_layers:
                raise SparseEditError(f"--layer {layer}: the model has layers 0..{num_layers - 1}")
    ref = options.reference_lang
    neurons: dict[tuple[str, int], torch.Tensor] = {}
    for strategy in options.strategy:
        if strategy == "detector":
            continue  # its one neuron is chosen from harmless activations when solving
        for layers in layer_sets:
            for layer in layers:
                if strategy == "paper":
                    chosen = artifact.neuron_set(options.neuron_lang or ref, layer)
                else:
                    chosen = edit_neurons(
                        artifact, layer, options.output_neurons, ref, low_langs, options.max_edit_neurons
                    )
                neurons[(strategy, layer)] = chosen
    usable = [
        ls for ls in layer_sets if all(index.numel() for (_, layer), index in neurons.items() if layer in ls)
    ]
    if not usable:
        raise SparseEditError("no neurons to edit at the requested layer(s); pick another --layer or neuron set")
    sites: list[Site] = []
    if {"paper", "detector"} & set(options.strategy):
        sites.append("mlp_input")
    if "output" in options.strategy:
        sites.append("neurons")
    if {"output", "detector"} & set(options.strategy):
        sites.append("residual")
    return Plan(list(options.strategy), usable, neurons, sites)


def gather(
    loaded: LoadedModel,
    anchors: Anchors,
    layers: Sequence[int],
    plan: Plan,
    options: ApplyOptions,
    reporter: Reporter,
) -> dict[int, LayerData]:
    """Collect every feature the planned strategies need at ``layers`` (one pass per prompt group)."""
    subsets = {layer: plan.neurons[("output", layer)] for layer in layers if ("output", layer) in plan.neurons}
    rows = FeatureRequest(layers, plan.sites, subsets, options.positions)
    # Harmless tail rows: keys of the output strategy (--harmless-tail-weight) and negatives of the detector,
    # which also needs token moments (MLP input sum; every neuron's energy, to pick the quietest).
    detector = "detector" in plan.strategies
    # The release detector fits harmless prompts' refusal projections, so it also needs their residual rows
    # (rows only: features keep no Gram of the residual stream).
    release = detector and options.detector_mode == "release"
    grams = FeatureRequest(
        layers,
        [s for s in plan.sites if s != "residual" or release],
        subsets,
        options.positions,
        gram=True,
        tail_rows="output" in plan.strategies or detector,
        moment_sites=["mlp_input", "neurons"] if detector else [],
    )
    bs = options.batch_size

    def run(items: list[Encoded], request: FeatureRequest, label: str) -> Features | None:
        return collect(loaded, items, request, bs, reporter, label) if items else None

    low = run(anchors.low_train, rows, "anchors: low-resource harmful")
    ref = run(anchors.ref_train, rows, "anchors: reference harmful")
    safe = run(anchors.safe_train, grams, "anchors: harmless tokens")
    ref_safe = None
    if "residual" in plan.sites:
        if not anchors.ref_safe_train:
            raise SparseEditError(
                f"--strategy output needs harmless prompts in {options.reference_lang} for the refusal direction"
            )
        # A pass of their own: reading these rows off the harmless pass instead (all layers' hidden states
        # for every harmless prompt) was measured no faster (benchmarks/README.md).
        ref_safe = run(
            anchors.ref_safe_train,
            FeatureRequest(layers, ["residual"], {}, options.positions),
            "anchors: reference harmless",
        )
    dev_low = run(anchors.low_dev, rows, "dev: low-resource harmful")
    dev_ref = run(anchors.ref_dev, rows, "dev: reference harmful")
    dev_safe = run(anchors.safe_dev, grams, "dev: harmless tokens")
    assert low is not None and ref is not None and safe is not None
    pairs = pair_rows(anchors.low_train, anchors.ref_train, options.positions, options.target)
    if options.target == "parallel" and not pairs[0]:
        raise SparseEditError(
            "--target parallel: no low-resource prompt shares an id with a reference-language prompt; "
            "use --target class-mean or add parallel prompts"
        )
    out = {}
    for layer in layers:

        def site_rows(features: Features, layer: int = layer) -> dict[str, torch.Tensor]:
            return {site: features.rows[(site, layer)] for site in plan.sites if (site, layer) in features.rows}

        dev = None
        if dev_low is not None and dev_ref is not None and dev_safe is not None:
            dev_pairs = pair_rows(anchors.low_dev, anchors.ref_dev, options.positions, options.target)
            dev = LayerData(
                site_rows(dev_low),
                site_rows(dev_ref),
                dev_pairs,
                {site: dev_safe.grams[(site, layer)] for site, _ in dev_safe.grams if _ == layer},
                dev_safe.tokens,
                None,
                safe_rows=site_rows(dev_safe),
            )
        out[layer] = LayerData(
            site_rows(low),
            site_rows(ref),
            pairs,
            {site: safe.grams[(site, layer)] for site, _ in safe.grams if _ == layer},
            safe.tokens,
            ref_safe.rows[("residual", layer)] if ref_safe is not None else None,
            dev,
            site_rows(safe),
            {site: total for (site, at), total in safe.sums.items() if at == layer},
            {site: total for (site, at), total in safe.squares.items() if at == layer},
        )
    return out


def solve_at(
    strategy: str,
    layer: int,
    data: LayerData,
    plan: Plan,
    checkpoint: Checkpoint,
    options: ApplyOptions,
    settings: SolveSettings,
    share: float,
) -> tuple[list[SliceEdit], dict[str, Any]]:
    if strategy == "detector":
        return detector_candidate(
            layer,
            checkpoint,
            data,
            options.gain,
            options.detector_margin,
            options.detector_sharpness,
            settings.lam,
            share,
            options.detector_mode,
        )
    neurons = plan.neurons[(strategy, layer)]
    if strategy == "paper":
        projections: list[Projection] = ["gate", "up"] if options.proj == "gate,up" else ["gate"]
        return paper_candidate(layer, neurons, checkpoint, projections, data, settings, share)
    output_settings = SolveSettings(
        options.output_gamma, settings.lam, settings.rank, settings.nullspace, settings.threshold
    )
    return output_candidate(
        layer,
        neurons,
        checkpoint,
        data,
        output_settings,
        options.gain,
        share,
        options.harmless_tail_weight,
        options.reference_weight,
    )


def build_candidates(
    loaded: LoadedModel,
    anchors: Anchors,
    plan: Plan,
    options: ApplyOptions,
    storage: dict[str, torch.dtype],
    reporter: Reporter,
) -> list[Candidate]:
    checkpoint = loaded.checkpoint
    settings = SolveSettings(
        options.gamma, options.lam, options.rank, options.nullspace, options.nullspace_threshold
    )
    candidates: list[Candidate] = []
    singles = sorted({ls[0] for ls in plan.layer_sets if len(ls) == 1})
    shared = gather(loaded, anchors, singles, plan, options, reporter) if singles else {}
    for strategy in plan.strategies:
        for layers in plan.layer_sets:
            candidate = Candidate(strategy, layers)
            per_layer = []
            for step, layer in enumerate(layers):
                if len(layers) == 1:
                    data = shared[layer]
                else:
                    # Sequential: features come from the model with the earlier layers' edits applied.
                    with applied_in_memory(
                        loaded.model, candidate.edits, storage_for(checkpoint, candidate.edits, storage)
                    ):
                        data = gather(loaded, anchors, [layer], plan, options, reporter)[layer]
                edits, diagnostics = solve_at(
                    strategy, layer, data, plan, checkpoint, options, settings, 1.0 / (len(layers) - step)
                )
                if diagnostics["jitter"]:
                    reporter.warn(f"{strategy} layer {layer}: Cholesky needed jitter {diagnostics['jitter']:.3g}")
                candidate.edits += edits
                if strategy != "detector":
                    # The harmless Gram of this layer's keys, as the solve saw it: verify recomputes the leak.
                    candidate.grams[layer] = data.safe_gram["mlp_input" if strategy == "paper" else "neurons"]
                    candidate.gram_tokens = data.safe_tokens
                per_layer.append(
                    {
                        "layer": layer,
                        "neurons": int(edits[0].neurons.numel()),
                        **plan.notes.get((strategy, layer), {}),
                        **diagnostics,
                    }
                )
            candidate.diagnostics = summarise_layers(per_layer)
            candidate.diagnostics["changed_parameters"] = sum(e.changed_parameters for e in candidate.edits)
            candidates.append(candidate)
    return candidates


def storage_for(
    checkpoint: Checkpoint, edits: Sequence[SliceEdit], known: dict[str, torch.dtype]
) -> dict[str, torch.dtype]:
    for edit in edits:
        known.setdefault(edit.slice.tensor, checkpoint.torch_dtype(edit.slice.tensor))
    return known


def summarise_layers(per_layer: list[dict[str, Any]]) -> dict[str, Any]:
    """One row per candidate: worst fit/leak over its layers, plus the per-layer details."""
    summary: dict[str, Any] = {"neurons": sum(row["neurons"] for row in per_layer), "per_layer": per_layer}
    for key in ("fit_train", "fit_dev", "leak_train", "leak_dev", "relative_norm"):
        values = [row[key] for row in per_layer if isinstance(row.get(key), float)]
        if values:
            summary[key] = max(values)
    summary["rank"] = max(row["rank"] for row in per_layer)
    summary["nullspace_dim"] = per_layer[0]["nullspace_dim"]
    return summary


def measure_candidates(
    loaded: LoadedModel,
    candidates: list[Candidate],
    anchors: Anchors,
    storage: dict[str, torch.dtype],
    options: ApplyOptions,
    reporter: Reporter,
) -> None:
    """Refusal log-odds on dev prompts and harmless KL, base vs each candidate edit (in memory); with
    --dev-generate also the judged refusal rate of generated replies."""
    bs = options.batch_size
    harmful, harmless = anchors.low_dev, anchors.safe_dev
    base_harmful = refusal_scores(loaded, harmful, bs) if harmful else {}
    base_harmless = refusal_scores(loaded, harmless, bs) if harmless else {}
    tokens = options.dev_generate

    def rates(items: list[Encoded], edit: Any = None) -> dict[str, float]:
        return refusal_rates(loaded, items, tokens, bs, reporter, *([edit] if edit else []))

    base_rates = {"harmful": rates(harmful), "harmless": rates(harmless)} if tokens else {}
    with reporter.progress("dev probes", len(candidates), unit="candidates") as progress:
        for candidate in candidates:

            def edit(candidate: Candidate = candidate) -> Any:
                return applied_in_memory(loaded.model, candidate.edits, storage)

            diag = candidate.diagnostics
            if harmful:
                after = refusal_scores(loaded, harmful, bs, edit)
                gains = {lang: mean(after[lang]) - mean(base_harmful[lang]) for lang in after}
                diag["refusal_gain_harmful"] = mean(list(gains.values()))
                diag["refusal_gain_by_lang"] = gains
            if harmless:
                # One pass gives the edited model's harmless log-odds and its KL to the base.
                scores = RefusalScores(loaded.tokenizer)
                diag["kl_harmless"], diag["nll_change_harmless"] = token_kl(loaded, harmless, bs, edit, scores)
                after = scores.by_lang
                gains = {lang: mean(after[lang]) - mean(base_harmless[lang]) for lang in after}
                diag["refusal_gain_harmless"] = mean(list(gains.values()))
            if "refusal_gain_harmful" in diag:
                diag["selective_gain"] = diag["refusal_gain_harmful"] - diag.get("refusal_gain_harmless", 0.0)
            if tokens:
                for role, items in (("harmful", harmful), ("harmless", harmless)):
                    gain, by_lang = rate_gains(rates(items, edit), base_rates[role])
                    diag[f"refusal_rate_gain_{role}"] = gain
                    diag[f"refusal_rate_gain_{role}_by_lang"] = by_lang
                diag["generated_selective_gain"] = (
                    diag["refusal_rate_gain_harmful"] - diag["refusal_rate_gain_harmless"]
                )
            if options.ceiling and harmful and anchors.ref_dev:
                patched = patched_refusal_scores(
                    loaded, harmful, anchors.ref_dev, {e.layer: e.neurons for e in candidate.edits}, bs
                )
                diag["ceiling_gain_harmful"] = mean(
                    [mean(patched[lang]) - mean(base_harmful[lang]) for lang in patched]
                )
            progress.advance()


def choose(candidates: list[Candidate], budget: float, reporter: Reporter) -> Candidate:
    within = [c for c in candidates if c.diagnostics.get("kl_harmless", 0.0) <= budget]
    if within:
        return max(
            within,
            key=lambda c: (
                c.diagnostics.get("generated_selective_gain", 0.0),
                c.diagnostics.get("selective_gain", 0.0),
            ),
        )
    best = min(candidates, key=lambda c: c.diagnostics.get("kl_harmless", float("inf")))
    reporter.warn(f"no candidate stays within --kl-budget {budget}; chose {best.label} (smallest KL)")
    return best


def format_table(candidates: list[Candidate], chosen: Candidate) -> str:
    header = f"{'candidate':<16} {'|S|':>5} {'params':>8} {'fit':>6} {'leak':>6} {'gain(harm)':>10} {'gain(safe)':>10} {'KL':>8} {'ceiling':>8} {'refuse(harm)':>12} {'refuse(safe)':>12}"
    lines = [header]
    for candidate in candidates:
        row = candidate.diagnostics

        def num(key: str, fmt: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return format(value, fmt) if isinstance(value, float) else "-"

        mark = " <- chosen" if candidate is chosen else ""
        lines.append(
            f"{candidate.label:<16} {row['neurons']:>5} {row['changed_parameters']:>8} {num('fit_dev', '6.3f'):>6} "
            f"{num('leak_dev', '6.3f'):>6} {num('refusal_gain_harmful', '+10.3f'):>10} "
            f"{num('refusal_gain_harmless', '+10.3f'):>10} {num('kl_harmless', '8.4f'):>8} "
            f"{num('ceiling_gain_harmful', '+8.3f'):>8} {num('refusal_rate_gain_harmful', '+12.3f'):>12} "
            f"{num('refusal_rate_gain_harmless', '+12.3f'):>12}{mark}"
        )
    return "\n".join(lines)


@dataclass
class ApplyResult:
    manifest: dict[str, Any]
    chosen: Candidate


def run_apply(options: ApplyOptions, reporter: Reporter) -> ApplyResult:
    check_output(options.output, "apply", command_inputs(options), options.overwrite)
    artifact = LocateArtifact.load(options.artifact)
    loaded = load_model(options)
    checkpoint = loaded.checkpoint
    for warning in artifact.check_model(checkpoint, f"--artifact {options.artifact}"):
        reporter.warn(warning)
    ref = options.reference_lang
    low_langs = [lang for lang in (options.low_langs or artifact.languages) if lang != ref]
    if not low_langs:
        raise SparseEditError("--low-langs: no low-resource language to edit for (all equal the reference)")
    plan = make_plan(options, artifact, loaded.num_layers, low_langs)
    if "detector" in plan.strategies:
        detector_activation(checkpoint)  # fail before any forward pass
    anchors = build_anchors(options, loaded, low_langs, reporter)
    work = count_work(
        vars(anchors),
        plan.layer_sets,
        len(plan.strategies),
        attribution=options.neuron_score == "attribution",
        ceiling=options.ceiling,
        dev_generate=options.dev_generate,
    )
    per_pass, per_reply = time_first_batch(loaded, anchors.low_train, options.batch_size, options.dev_generate)
    reporter.info(describe(work, per_pass, per_reply))
    if options.neuron_score == "attribution":
        rank_by_attribution(loaded, anchors, plan, options, reporter)
    storage: dict[str, torch.dtype] = {}
    candidates = build_candidates(loaded, anchors, plan, options, storage, reporter)
    for candidate in candidates:
        storage_for(checkpoint, candidate.edits, storage)
    if anchors.low_dev or anchors.safe_dev:
        measure_candidates(loaded, candidates, anchors, storage, options, reporter)
    chosen = choose(candidates, options.kl_budget, reporter) if len(candidates) > 1 else candidates[0]
    reporter.info(format_table(candidates, chosen))

    written = write_back(checkpoint, chosen.edits)
    chosen.diagnostics["retention"] = written.retention
    for name, kept in written.retention.items():
        if kept < 0.9:
            reporter.warn(
                f"{name}: only {kept:.1%} of the update survived the cast to {checkpoint.tensors[name].dtype}"
            )
    delta = EditDelta(chosen.edits, chosen.grams, chosen.gram_tokens, checkpoint.fingerprint())
    delta_bytes = delta.to_bytes()
    table = [
        {"candidate": c.label, "strategy": c.strategy, "layers": list(c.layers), **c.diagnostics}
        for c in candidates
    ]
    manifest = build_manifest(options, checkpoint, chosen, table, delta_bytes, low_langs)
    manifest["anchors"] = anchors.counts()
    extra = {
        DELTA_FILE: delta_bytes,
        MANIFEST_FILE: (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
        MODEL_CARD_FILE: model_card(manifest).encode(),
    }
    write_checkpoint(
        checkpoint,
        options.output,
        written.replacements,
        command="apply",
        overwrite=options.overwrite,
        extra_files=extra,
        warn=reporter.warn,
    )
    return ApplyResult(manifest, chosen)


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
    return {
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
        "base": {"path": str(checkpoint.path), "fingerprint": checkpoint.fingerprint()},
        "artifact": {
            "path": str(options.artifact),
            "sha256": hashlib.sha256(options.artifact.read_bytes()).hexdigest(),
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
