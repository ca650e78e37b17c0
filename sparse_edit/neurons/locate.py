"""``sparse-edit locate``: activation statistics and safety-neuron sets per language and layer."""

from __future__ import annotations

from typing import Any

import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import LABELS, Label, Prompt
from sparse_edit.data.selection import prepare_prompts
from sparse_edit.io.destination import check_output
from sparse_edit.model.batching import batch_memory_guard, batches, encode_prompts
from sparse_edit.model.hooks import Pooling, capture, pool, run_base
from sparse_edit.model.loading import LoadedModel, load_model
from sparse_edit.neurons.artifact import LocateArtifact
from sparse_edit.neurons.moments import Moments
from sparse_edit.neurons.scores import RECOMMENDED_LAYER_RULE, ClassStats, recommend_layer, score, select
from sparse_edit.options import LocateOptions, ModelOptions, PromptOptions
from sparse_edit.runner import Steps


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
    prompt_sets = prepare_prompts(PromptOptions.of(options), reporter)
    loaded = load_model(ModelOptions.of(options))
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
            "weights_sha256": checkpoint.weights_sha256(),
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


def locate_steps() -> Steps[LocateOptions, None, LocateArtifact, LocateArtifact]:
    """locate's steps for ``run_command``: the artifact, saved when there is an ``output``."""

    def work(options: LocateOptions, _checked: None, reporter: Reporter) -> LocateArtifact:
        return run_locate(options, reporter)

    def write(options: LocateOptions, artifact: LocateArtifact, reporter: Reporter) -> LocateArtifact:
        if options.output is not None:
            check_output(options.output, "locate", [], options.overwrite)  # nothing appeared meanwhile
            artifact.save(options.output)
        return artifact

    return Steps("locate", lambda options: None, work, write)
