"""Everything the planned strategies read at their edit layers, collected in shared passes.

One pass per anchor group (low-resource harmful, reference harmful, harmless, reference
harmless, and the dev groups) reads every site any planned strategy needs, at every layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from sparse_edit.console import Reporter
from sparse_edit.edit.anchors import Anchors
from sparse_edit.edit.layer_data import LayerData
from sparse_edit.edit.plan import Plan
from sparse_edit.edit.strategies.base import SITE_ORDER
from sparse_edit.errors import SparseEditError
from sparse_edit.model.batching import Encoded
from sparse_edit.model.features import FeatureRequest, Features, Site, collect
from sparse_edit.model.loading import LoadedModel
from sparse_edit.options import ApplyOptions


def pair_rows(
    low: Sequence[Encoded], ref: Sequence[Encoded], positions: int, kind: str
) -> tuple[list[int], list[int]]:
    """Row indices (prompt-major, ``positions`` rows per prompt) pairing each low row with its target row.

    ``parallel`` pairs a prompt with the reference prompt of the same id, position by position;
    ``class-mean`` returns an empty reference list (the caller uses the reference mean).
    """
    low_rows = list(range(len(low) * positions))
    if kind == "class-mean":
        return low_rows, []
    ref_index = {item.prompt.id: i for i, item in enumerate(ref)}
    keep, targets = [], []
    for i, item in enumerate(low):
        j = ref_index.get(item.prompt.id)
        if j is None:
            continue
        keep += [i * positions + p for p in range(positions)]
        targets += [j * positions + p for p in range(positions)]
    return keep, targets


def requests(plan: Plan, layers: Sequence[int], options: ApplyOptions) -> tuple[FeatureRequest, FeatureRequest]:
    """(rows of the harmful groups, Gram and rows of the harmless group) for the planned strategies."""
    needs = [plan.strategy(name).needs(plan.settings[name]) for name in plan.parts]
    subsets = {
        layer: plan.neurons[(name, layer)]
        for name, need in zip(plan.parts, needs, strict=True)
        if need.neuron_subset
        for layer in layers
        if (name, layer) in plan.neurons
    }
    rows = FeatureRequest(layers, plan.sites, subsets, options.positions)
    # Residual rows of harmless prompts only where a strategy fits their refusal projection (rows only:
    # features keep no Gram of the residual stream).
    harmless_residual = any(need.harmless_residual_rows for need in needs)
    moments = {site for need in needs for site in need.harmless_moments}
    grams = FeatureRequest(
        layers,
        [site for site in plan.sites if site != "residual" or harmless_residual],
        subsets,
        options.positions,
        gram=True,
        tail_rows=any(need.harmless_tail_rows for need in needs),
        moment_sites=[site for site in SITE_ORDER if site in moments],
    )
    return rows, grams


def gather(
    loaded: LoadedModel,
    anchors: Anchors,
    layers: Sequence[int],
    plan: Plan,
    options: ApplyOptions,
    reporter: Reporter,
) -> dict[int, LayerData]:
    """Collect every feature the planned strategies need at ``layers`` (one pass per prompt group)."""
    rows, grams = requests(plan, layers, options)
    bs = options.batch_size

    def run(items: list[Encoded], request: FeatureRequest, label: str) -> Features | None:
        return collect(loaded, items, request, bs, reporter, label) if items else None

    low = run(anchors.low_train, rows, "anchors: low-resource harmful")
    ref = run(anchors.ref_train, rows, "anchors: reference harmful")
    safe = run(anchors.safe_train, grams, "anchors: harmless tokens")
    replies = run(anchors.safe_replies, replace(grams, tail_rows=False), "anchors: harmless replies")
    if safe is not None and replies is not None:
        safe = safe.with_tokens_of(replies)
    ref_safe = None
    if "residual" in plan.sites:
        if not anchors.ref_safe_train:
            raise SparseEditError(
                f"--strategy {'/'.join(plan.strategies)} needs harmless prompts in {options.reference_lang} "
                "for the refusal direction"
            )
        # A pass of their own: reading these rows off the harmless pass instead (all layers' hidden states
        # for every harmless prompt) was measured no faster (benchmarks/results/apply-passes.json).
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
    dev_pairs = pair_rows(anchors.low_dev, anchors.ref_dev, options.positions, options.target)
    dev_groups = None
    if dev_low is not None and dev_ref is not None and dev_safe is not None:
        dev_groups = (dev_low, dev_ref, dev_safe)
    langs = (row_langs(anchors.low_train, options.positions), row_langs(anchors.low_dev, options.positions))
    return {
        layer: _layer_data(layer, plan.sites, (low, ref, safe), ref_safe, pairs, dev_groups, dev_pairs, langs)
        for layer in layers
    }


def row_langs(items: Sequence[Encoded], positions: int) -> tuple[str, ...]:
    """The language of every row of a prompt-major group (``positions`` rows per prompt)."""
    return tuple(item.prompt.lang for item in items for _ in range(positions))


def _layer_data(
    layer: int,
    sites: Sequence[Site],
    train: tuple[Features, Features, Features],
    ref_safe: Features | None,
    pairs: tuple[list[int], list[int]],
    dev: tuple[Features, Features, Features] | None,
    dev_pairs: tuple[list[int], list[int]],
    langs: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()),
) -> LayerData:
    """One layer's rows, Grams and moments out of the shared passes (train, and dev when there is one)."""
    low, ref, safe = train
    dev_data = None
    if dev is not None:
        dev_low, dev_ref, dev_safe = dev
        dev_data = LayerData(
            _at(dev_low, layer, sites),
            _at(dev_ref, layer, sites),
            dev_pairs,
            _grams_at(dev_safe, layer),
            dev_safe.tokens,
            None,
            harmless_rows=_at(dev_safe, layer, sites),
            low_row_langs=langs[1],
        )
    return LayerData(
        _at(low, layer, sites),
        _at(ref, layer, sites),
        pairs,
        _grams_at(safe, layer),
        safe.tokens,
        ref_safe.rows[("residual", layer)] if ref_safe is not None else None,
        dev_data,
        _at(safe, layer, sites),
        {site: total for (site, at), total in safe.sums.items() if at == layer},
        {site: total for (site, at), total in safe.squares.items() if at == layer},
        langs[0],
    )


def _at(features: Features, layer: int, sites: Sequence[Site]) -> dict[str, torch.Tensor]:
    return {site: features.rows[(site, layer)] for site in sites if (site, layer) in features.rows}


def _grams_at(features: Features, layer: int) -> dict[str, torch.Tensor]:
    return {site: gram for (site, at), gram in features.grams.items() if at == layer}
