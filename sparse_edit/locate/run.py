"""``sparse-edit locate``: activation statistics and safety-neuron sets per language and layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparse_edit.config import LocateOptions, PromptOptions
from sparse_edit.console import Reporter
from sparse_edit.data.prompts import (
    LABELS,
    Label,
    LoadedSource,
    Prompt,
    by_language,
    describe_missing,
    load_sources,
    missing_parallel_ids,
)
from sparse_edit.errors import SparseEditError
from sparse_edit.locate.artifact import LocateArtifact
from sparse_edit.locate.moments import Moments
from sparse_edit.locate.neurons import RECOMMENDED_LAYER_RULE, ClassStats, recommend_layer, score, select
from sparse_edit.model.hooks import Pooling, capture, pool, run_base
from sparse_edit.model.loading import LoadedModel, batch_memory_guard, batches, encode_prompts, load_model


@dataclass
class PromptSets:
    harmful: list[Prompt]
    harmless: list[Prompt]
    languages: list[str]
    sources: list[dict[str, Any]]

    def all(self) -> list[Prompt]:
        return self.harmful + self.harmless


def _source_record(source: LoadedSource, label: Label) -> dict[str, Any]:
    return {"label": label, "spec": source.spec, "files": [str(f) for f in source.files], "sha256": source.sha256}


def _slice(prompts: list[Prompt], skip: int, limit: int | None) -> list[Prompt]:
    """Per language, the prompts after the first ``skip``, at most ``limit`` of them (source order)."""
    if not skip and limit is None:
        return prompts
    kept: list[Prompt] = []
    for items in by_language(prompts).values():
        kept.extend(items[skip : None if limit is None else skip + limit])
    return kept


def prepare_prompts(options: PromptOptions, reporter: Reporter, harmless_everywhere: bool = True) -> PromptSets:
    """Load, filter and check the harmful and harmless prompt sources.

    With ``harmless_everywhere`` false (eval), a language may have harmful prompts only.
    """
    harmful, harmful_sources = load_sources(options.harmful, "harmful", "--harmful")
    harmless, harmless_sources = load_sources(options.harmless, "harmless", "--harmless")
    found = sorted({p.lang for p in harmful} | {p.lang for p in harmless})
    languages = list(options.languages) if options.languages else found
    if options.reference_lang not in languages:
        languages.insert(0, options.reference_lang)
    harmful_langs, harmless_langs = {p.lang for p in harmful}, {p.lang for p in harmless}
    for lang in languages:
        if lang not in harmful_langs:
            raise SparseEditError(
                f"--languages: {lang} has no harmful prompts in --harmful; add a source or drop it"
            )
        if lang not in harmless_langs and harmless_everywhere:
            raise SparseEditError(
                f"--languages: {lang} has no harmless prompts in --harmless; add a source or drop it"
            )
    keep = set(languages)
    harmful = _slice([p for p in harmful if p.lang in keep], options.skip, options.limit)
    harmless_skip = options.skip if options.harmless_skip is None else options.harmless_skip
    harmless = _slice(
        [p for p in harmless if p.lang in keep], harmless_skip, options.harmless_limit or options.limit
    )
    for label, prompts in (("harmful", harmful), ("harmless", harmless)):
        for lang, items in by_language(prompts).items():
            if len(items) < 2:
                raise SparseEditError(
                    f"--{label}: {lang} has {len(items)} {label} prompt(s); at least 2 are needed"
                )
    gaps = missing_parallel_ids(harmful, options.reference_lang)
    if gaps:
        reporter.warn(
            f"harmful prompts not parallel to {options.reference_lang} (ids missing): {describe_missing(gaps)}"
        )
    sources = [_source_record(s, "harmful") for s in harmful_sources]
    sources += [_source_record(s, "harmless") for s in harmless_sources]
    return PromptSets(harmful, harmless, languages, sources)


def collect_moments(
    loaded: LoadedModel,
    prompts: list[Prompt],
    groups: dict[tuple[str, Label], int],
    pooling: Pooling,
    options: LocateOptions,
    reporter: Reporter,
) -> Moments:
    """One forward pass per prompt; pooled neuron activations accumulated per group and layer."""
    family, model = loaded.family, loaded.model
    layers = list(range(loaded.num_layers))
    moments = Moments.zeros(len(groups), loaded.num_layers, loaded.checkpoint.dims.mlp_width)
    encoded = encode_prompts(loaded.tokenizer, prompts, options.system_prompt, options.max_length)
    truncated = sum(item.truncated for item in encoded)
    if truncated:
        reporter.warn(
            f"{truncated} prompt(s) longer than --max-length {options.max_length} were cut from the left"
        )
    state: dict[str, torch.Tensor] = {}

    def sink(layer: int, activation: torch.Tensor) -> None:
        pooled = pool(activation, state["mask"].to(activation.device), pooling)
        moments.add(layer, state["groups"], pooled.to("cpu"))

    pad_id = int(loaded.tokenizer.pad_token_id)
    with (
        reporter.progress("locate", total=len(encoded)) as progress,
        capture(family, model, layers, "neurons", sink),
    ):
        for batch in batches(encoded, options.batch_size, pad_id):
            state["mask"] = batch.attention_mask
            state["groups"] = torch.tensor([groups[(i.prompt.lang, i.prompt.label)] for i in batch.items])
            with batch_memory_guard(options.batch_size), torch.inference_mode():
                run_base(model, batch.model_inputs(loaded.input_device))
            moments.count_rows(state["groups"])
            progress.advance(len(batch.items))
    return moments


def run_locate(options: LocateOptions, reporter: Reporter) -> LocateArtifact:
    prompt_sets = prepare_prompts(options, reporter)
    loaded = load_model(options)
    reporter.info(
        f"model: {loaded.checkpoint.path} ({loaded.family.name}, {loaded.num_layers} layers, "
        f"MLP width {loaded.checkpoint.dims.mlp_width}) on {loaded.device}"
    )
    groups = {
        (lang, label): i
        for i, (lang, label) in enumerate((la, lb) for la in prompt_sets.languages for lb in LABELS)
    }
    moments = collect_moments(loaded, prompt_sets.all(), groups, options.pooling, options, reporter)

    stats: dict[str, dict[str, ClassStats]] = {}
    scores = {}
    neurons = {}
    counts: dict[str, dict[str, int]] = {}
    for lang in prompt_sets.languages:
        stats[lang] = {
            label: ClassStats(
                int(moments.count[groups[(lang, label)]]),
                moments.mean(groups[(lang, label)]),
                moments.variance(groups[(lang, label)]),
            )
            for label in LABELS
        }
        counts[lang] = {label: stats[lang][label].count for label in LABELS}
        scores[lang] = score(stats[lang]["harmful"], stats[lang]["harmless"])
        neurons[lang] = select(scores[lang], options.tau_mag, options.tau_stat, options.max_neurons)

    ref = options.reference_lang
    recommended = recommend_layer(scores[ref], neurons[ref])
    checkpoint = loaded.checkpoint
    artifact = LocateArtifact(
        model={
            "path": str(checkpoint.path),
            "fingerprint": checkpoint.fingerprint(),
            "structure": checkpoint.structure(),
        },
        # Where the artifact goes is not an input of locate; leaving it out keeps reruns byte-identical.
        settings=options.model_dump(mode="json", exclude={"output", "overwrite"}),
        sources=prompt_sets.sources,
        reference_lang=ref,
        languages=prompt_sets.languages,
        num_layers=loaded.num_layers,
        mlp_width=checkpoint.dims.mlp_width,
        counts=counts,
        neurons=neurons,
        stats=stats,
        scores=scores,
        recommended_layer=recommended,
        recommended_rule=RECOMMENDED_LAYER_RULE,
    )
    return artifact


def layer_table(artifact: LocateArtifact) -> list[dict[str, Any]]:
    """One row per layer: set size per language and mean Jaccard of the others to the reference."""
    sizes = artifact.set_sizes()
    overlaps = artifact.jaccard_to_reference()
    rows = []
    for layer in range(artifact.num_layers):
        others = [overlaps[lang][layer] for lang in overlaps]
        rows.append(
            {
                "layer": layer,
                "sizes": {lang: sizes[lang][layer] for lang in artifact.languages},
                "mean_jaccard_to_reference": round(sum(others) / len(others), 4) if others else None,
            }
        )
    return rows
