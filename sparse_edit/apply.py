"""``sparse-edit apply``: features -> closed-form solve -> (layer choice) -> surgical write."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from typing import Any

import torch

from sparse_edit import __version__
from sparse_edit.architectures import NeuronSlice, Projection
from sparse_edit.artifact import LocateArtifact
from sparse_edit.checkpoint import Checkpoint, write_checkpoint
from sparse_edit.checkpoint.writer import check_destination
from sparse_edit.config import ApplyOptions
from sparse_edit.console import Reporter
from sparse_edit.delta import DELTA_FILE, MANIFEST_FILE, EditDelta, SliceEdit, applied_in_memory, write_back
from sparse_edit.errors import SparseEditError
from sparse_edit.features import pooled_features, token_gram
from sparse_edit.locate import prepare_prompts
from sparse_edit.modeling import Encoded, LoadedModel, encode_prompts, load_model
from sparse_edit.probes import mean, refusal_scores, token_kl
from sparse_edit.prompts import Prompt
from sparse_edit.solver import EditProblem, SolveSettings, fit_ratio, leak_ratio, solve

LAYER_RULE = (
    "largest mean refusal log-odds gain on dev low-resource harmful prompts among candidates whose mean "
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
    low_dev: list[Encoded]
    ref_dev: list[Encoded]
    harmless_train: list[Encoded]
    harmless_dev: list[Encoded]


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
    return Anchors(
        encode(low_train),
        encode(ref_train),
        encode(low_dev),
        encode(ref_dev),
        encode(safe_train),
        encode(safe_dev),
    )


@dataclass
class Targets:
    """Row-aligned key and reference features for the low-resource harmful prompts of one split."""

    keys: torch.Tensor  # [N, d] MLP inputs of low-resource prompts
    reference: torch.Tensor  # [N, d] the target point for each row


def targets_for(
    low: list[Encoded], low_x: torch.Tensor, ref: list[Encoded], ref_x: torch.Tensor, kind: str
) -> Targets:
    if kind == "class-mean":
        centre = ref_x.mean(0, keepdim=True)
        return Targets(low_x, centre.expand_as(low_x))
    ref_row = {item.prompt.id: i for i, item in enumerate(ref)}
    pairs = [(i, ref_row[item.prompt.id]) for i, item in enumerate(low) if item.prompt.id in ref_row]
    if not pairs:
        raise SparseEditError(
            "--target parallel: no low-resource prompt shares an id with a reference-language prompt; "
            "use --target class-mean or add parallel prompts"
        )
    rows, ref_rows = zip(*pairs, strict=True)
    return Targets(low_x[list(rows)], ref_x[list(ref_rows)])


@dataclass
class Candidate:
    layer: int
    edits: list[SliceEdit]
    diagnostics: dict[str, Any] = field(default_factory=dict)


def paper_candidate(
    layer: int,
    neurons: torch.Tensor,
    checkpoint: Checkpoint,
    projections: list[Projection],
    train: Targets,
    dev: Targets | None,
    gram: torch.Tensor,
    tokens: int,
    dev_gram: torch.Tensor | None,
    settings: SolveSettings,
) -> Candidate:
    """The published edit: input weights of the safety neurons, pre-activation target (X_ref − X_low) W_S."""
    family, d_ff = checkpoint.family, checkpoint.dims.mlp_width
    slices: list[tuple[Projection, NeuronSlice, torch.Tensor]] = []
    for projection in projections:
        neuron_slice = family.neuron_slice(layer, projection, d_ff)
        weight = checkpoint.load_tensor(neuron_slice.tensor)
        slices.append((projection, neuron_slice, neuron_slice.read(weight, neurons).T.to(torch.float64)))
    w_s = torch.cat([w for _, _, w in slices], dim=1)  # [d, m * len(projections)]

    def problem(t: Targets) -> EditProblem:
        keys = t.keys.to(torch.float64)
        return EditProblem(keys, (t.reference.to(torch.float64) - keys) @ w_s, gram, tokens)

    train_problem = problem(train)
    solution = solve(train_problem, settings)
    delta = solution.delta
    m = int(neurons.numel())
    edits = [
        SliceEdit(
            layer=layer,
            projection=projection,
            slice=neuron_slice,
            neurons=neurons,
            a=solution.right[:, k * m : (k + 1) * m].T.float().contiguous(),
            b=solution.left.T.float().contiguous(),
            key_axis="columns",
        )
        for k, (projection, neuron_slice, _) in enumerate(slices)
    ]
    diagnostics: dict[str, Any] = {
        "neurons": m,
        "rank": solution.rank,
        "jitter": solution.jitter,
        "nullspace_dim": solution.nullspace_dim,
        "fit_train": fit_ratio(train_problem.keys, train_problem.targets, delta),
        "leak_train": leak_ratio(gram, delta, w_s),
        "relative_norm": float(delta.norm() / w_s.norm()) if float(w_s.norm()) > 0 else 0.0,
        "anchors_train": int(train.keys.shape[0]),
    }
    if dev is not None and dev.keys.shape[0] > 0:
        dev_problem = problem(dev)
        diagnostics["fit_dev"] = fit_ratio(dev_problem.keys, dev_problem.targets, delta)
    if dev_gram is not None:
        diagnostics["leak_dev"] = leak_ratio(dev_gram, delta, w_s)
    return Candidate(layer, edits, diagnostics)


def default_candidates(num_layers: int, recommended: int | None) -> list[int]:
    low, high = num_layers // 3, max(num_layers - 2, num_layers // 3)
    spread = {round(low + (high - low) * k / 3) for k in range(4)}
    if recommended is not None:
        spread.add(recommended)
    return sorted(layer for layer in spread if 0 <= layer < num_layers)


@dataclass
class ApplyResult:
    manifest: dict[str, Any]
    candidates: list[dict[str, Any]]
    chosen: Candidate


def run_apply(options: ApplyOptions, reporter: Reporter) -> ApplyResult:
    artifact = LocateArtifact.load(options.artifact)
    loaded = load_model(options)
    checkpoint = loaded.checkpoint
    check_destination(checkpoint.path, options.output, options.overwrite)
    for warning in artifact.check_model(checkpoint, f"--artifact {options.artifact}"):
        reporter.warn(warning)
    ref = options.reference_lang
    low_langs = options.low_langs or [lang for lang in artifact.languages if lang != ref]
    low_langs = [lang for lang in low_langs if lang != ref]
    if not low_langs:
        raise SparseEditError("--low-langs: no low-resource language to edit for (all equal the reference)")
    neuron_lang = options.neuron_lang or ref

    num_layers = loaded.num_layers
    if options.layer == "auto":
        layers = options.candidate_layers or default_candidates(num_layers, artifact.recommended_layer)
    else:
        layers = [int(options.layer)]
    for layer in layers:
        if not 0 <= layer < num_layers:
            raise SparseEditError(f"--layer {layer}: the model has layers 0..{num_layers - 1}")
    layers = [layer for layer in layers if artifact.neuron_set(neuron_lang, layer).numel() > 0]
    if not layers:
        raise SparseEditError(
            f"no safety neurons for {neuron_lang} at the requested layer(s); pick another --layer"
        )

    anchors = build_anchors(options, loaded, low_langs, reporter)
    bs = options.batch_size
    x_low = pooled_features(
        loaded, anchors.low_train, layers, "mlp_input", bs, reporter, label="harmful anchors (low)"
    )
    x_ref = pooled_features(
        loaded, anchors.ref_train, layers, "mlp_input", bs, reporter, label=f"harmful anchors ({ref})"
    )
    safe = token_gram(loaded, anchors.harmless_train, layers, "mlp_input", bs, reporter)
    have_dev = bool(anchors.low_dev) and bool(anchors.ref_dev)
    if have_dev:
        d_low = pooled_features(
            loaded, anchors.low_dev, layers, "mlp_input", bs, reporter, label="dev harmful (low)"
        )
        d_ref = pooled_features(
            loaded, anchors.ref_dev, layers, "mlp_input", bs, reporter, label=f"dev harmful ({ref})"
        )
    safe_dev = (
        token_gram(loaded, anchors.harmless_dev, layers, "mlp_input", bs, reporter, "dev harmless")
        if anchors.harmless_dev
        else None
    )

    settings = SolveSettings(
        options.gamma, options.lam, options.rank, options.nullspace, options.nullspace_threshold
    )
    projections: list[Projection] = ["gate", "up"] if options.proj == "gate,up" else ["gate"]
    candidates = []
    for layer in layers:
        train = targets_for(anchors.low_train, x_low[layer], anchors.ref_train, x_ref[layer], options.target)
        dev = (
            targets_for(anchors.low_dev, d_low[layer], anchors.ref_dev, d_ref[layer], options.target)
            if have_dev
            else None
        )
        candidate = paper_candidate(
            layer,
            artifact.neuron_set(neuron_lang, layer),
            checkpoint,
            projections,
            train,
            dev,
            safe.gram[layer],
            safe.tokens,
            safe_dev.gram[layer] if safe_dev else None,
            settings,
        )
        if candidate.diagnostics["jitter"]:
            reporter.warn(f"layer {layer}: Cholesky needed jitter {candidate.diagnostics['jitter']:.3g}")
        candidates.append(candidate)

    storage = {e.slice.tensor: checkpoint.torch_dtype(e.slice.tensor) for c in candidates for e in c.edits}
    if have_dev or anchors.harmless_dev:
        measure_candidates(loaded, candidates, anchors, storage, bs, reporter)
    chosen = choose(candidates, options.kl_budget, reporter) if len(candidates) > 1 else candidates[0]
    table = [{"layer": c.layer, **c.diagnostics} for c in candidates]
    if len(candidates) > 1:
        reporter.info(format_table(table, chosen.layer))

    written = write_back(checkpoint, chosen.edits)
    for name, kept in written.retention.items():
        chosen.diagnostics.setdefault("retention", {})[name] = kept
        if kept < 0.9:
            reporter.warn(
                f"{name}: only {kept:.1%} of the update survived the cast to {checkpoint.tensors[name].dtype}"
            )
    delta = EditDelta(chosen.edits, {chosen.layer: safe.gram[chosen.layer]}, safe.tokens, checkpoint.fingerprint())
    delta_bytes = delta.to_bytes()
    manifest = build_manifest(options, artifact, checkpoint, chosen, table, delta_bytes, neuron_lang, low_langs)
    extra = {
        DELTA_FILE: delta_bytes,
        MANIFEST_FILE: (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
        "README.md": model_card(manifest).encode(),
    }
    write_checkpoint(
        checkpoint,
        options.output,
        written.replacements,
        overwrite=options.overwrite,
        extra_files=extra,
        warn=reporter.warn,
    )
    return ApplyResult(manifest, table, chosen)


def measure_candidates(
    loaded: LoadedModel,
    candidates: list[Candidate],
    anchors: Anchors,
    storage: dict[str, torch.dtype],
    batch_size: int,
    reporter: Reporter,
) -> None:
    """Refusal log-odds on dev prompts and harmless KL, base vs each candidate edit (in memory)."""
    probe_harmful = anchors.low_dev
    probe_harmless = anchors.harmless_dev
    base_harmful = refusal_scores(loaded, probe_harmful, batch_size) if probe_harmful else {}
    base_harmless = refusal_scores(loaded, probe_harmless, batch_size) if probe_harmless else {}
    with reporter.progress("probe candidates", len(candidates), unit="layers") as progress:
        for candidate in candidates:

            def edit(candidate: Candidate = candidate) -> Any:
                return applied_in_memory(loaded.model, candidate.edits, storage)

            if probe_harmful:
                after = refusal_scores(loaded, probe_harmful, batch_size, edit)
                gains = {lang: mean(after[lang]) - mean(base_harmful[lang]) for lang in after}
                candidate.diagnostics["refusal_gain_harmful"] = mean(list(gains.values()))
                candidate.diagnostics["refusal_gain_by_lang"] = gains
            if probe_harmless:
                after = refusal_scores(loaded, probe_harmless, batch_size, edit)
                gains = {lang: mean(after[lang]) - mean(base_harmless[lang]) for lang in after}
                candidate.diagnostics["refusal_gain_harmless"] = mean(list(gains.values()))
                kl, nll = token_kl(loaded, probe_harmless, batch_size, edit)
                candidate.diagnostics["kl_harmless"] = kl
                candidate.diagnostics["nll_change_harmless"] = nll
            progress.advance()


def choose(candidates: list[Candidate], budget: float, reporter: Reporter) -> Candidate:
    within = [c for c in candidates if c.diagnostics.get("kl_harmless", 0.0) <= budget]
    if within:
        return max(within, key=lambda c: c.diagnostics.get("refusal_gain_harmful", 0.0))
    best = min(candidates, key=lambda c: c.diagnostics.get("kl_harmless", float("inf")))
    reporter.warn(f"no candidate layer stays within --kl-budget {budget}; chose layer {best.layer} (smallest KL)")
    return best


def format_table(rows: list[dict[str, Any]], chosen: int) -> str:
    header = f"{'layer':>5} {'|S|':>5} {'fit':>6} {'leak':>6} {'gain(harm)':>10} {'gain(safe)':>10} {'KL':>8}"
    lines = [header]
    for row in rows:

        def num(key: str, fmt: str, row: dict[str, Any] = row) -> str:
            value = row.get(key)
            return format(value, fmt) if isinstance(value, float) else "-"

        mark = " <- chosen" if row["layer"] == chosen else ""
        lines.append(
            f"{row['layer']:>5} {row['neurons']:>5} {num('fit_dev', '6.3f'):>6} {num('leak_dev', '6.3f'):>6} "
            f"{num('refusal_gain_harmful', '+10.3f'):>10} {num('refusal_gain_harmless', '+10.3f'):>10} "
            f"{num('kl_harmless', '8.4f'):>8}{mark}"
        )
    return "\n".join(lines)


def build_manifest(
    options: ApplyOptions,
    artifact: LocateArtifact,
    checkpoint: Checkpoint,
    chosen: Candidate,
    table: list[dict[str, Any]],
    delta_bytes: bytes,
    neuron_lang: str,
    low_langs: list[str],
) -> dict[str, Any]:
    import safetensors
    import transformers

    changed = sum(edit.changed_parameters for edit in chosen.edits)
    total = checkpoint.parameter_count
    return {
        "kind": "sparse-edit/manifest",
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
        "strategy": options.strategy,
        "layer": chosen.layer,
        "layer_rule": LAYER_RULE if len(table) > 1 else "given by --layer",
        "neuron_lang": neuron_lang,
        "low_langs": low_langs,
        "edits": [
            {
                "tensor": edit.slice.tensor,
                "projection": edit.projection,
                "neurons": int(edit.neurons.numel()),
                "rank": int(edit.a.shape[1]),
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
    base = manifest["base"]["path"]
    edits = "\n".join(
        f"- `{e['tensor']}`: {e['neurons']} neuron rows, rank {e['rank']}, ‖ΔW‖ = {e['delta_norm']:.4g}"
        for e in manifest["edits"]
    )
    diag = manifest["diagnostics"]
    lines = [
        "---",
        f"base_model: {json.dumps(base)}",
        "tags:",
        "- sparse-edit",
        "- safety",
        "---",
        "",
        f"# Edited with sparse-edit {manifest['tool_version']}",
        "",
        f"A closed-form, low-rank edit of layer {manifest['layer']} ({manifest['strategy']} strategy) that maps "
        f"harmful prompts in {', '.join(manifest['low_langs'])} toward the {manifest['settings']['reference_lang']} "
        "safety pattern while a null-space term keeps harmless inputs unchanged. Nothing else was changed.",
        "",
        edits,
        "",
        f"Changed parameters: {manifest['changed_parameters']} ({manifest['changed_fraction']:.4%} of the model).",
        "",
        "| diagnostic | value |",
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
    if manifest.get("evaluation"):
        lines += ["", "## Evaluation", "", manifest["evaluation"]]
    return "\n".join(lines) + "\n"
