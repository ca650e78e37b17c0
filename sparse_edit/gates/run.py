"""``sparse-edit gates``: cache the states, screen gate candidates on them, report the ceiling, write the gate."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from typing import Any

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.errors import SparseEditError
from sparse_edit.gates.cache import FeatureCache, collect_cache
from sparse_edit.gates.gate import FoldFits, Gate, figures
from sparse_edit.gates.probes import ProbeForm
from sparse_edit.gates.report import markdown, write_heatmap
from sparse_edit.gates.screen import (
    Candidate,
    ScreenGrid,
    ceiling,
    choose,
    chosen_gate,
    front,
    limiting_sources,
    screen,
)
from sparse_edit.io.staging import staged_folder
from sparse_edit.options import ModelOptions, PromptOptions
from sparse_edit.options.gates import GateOptions
from sparse_edit.runner import Steps
from sparse_edit.version import __version__

ANCHOR_FEATURES = "features-anchor.safetensors"
TEST_FEATURES = "features-test.safetensors"
GATE_FILE = "gate.safetensors"
FRONT_DIR = "front"


@dataclass
class GatesResult:
    payload: dict[str, Any]  # what ceiling.json holds
    gate: Gate | None


@dataclass
class Screened:
    """What the gates work leaves for its write: the caches, the candidates and their fold fits, the report."""

    stored_anchors: FeatureCache
    anchors: FeatureCache  # with the earlier-token rows, if any
    test: FeatureCache | None
    candidates: list[Candidate]
    fits: dict[tuple[int, ProbeForm], FoldFits]
    result: GatesResult


def gates_steps() -> Steps[GateOptions, None, Screened, GatesResult]:
    """gates' steps for ``run_command``."""
    return Steps("gates", lambda options: None, cache_and_screen, write_gates)


def cache_and_screen(options: GateOptions, _checked: None, reporter: Reporter) -> Screened:
    """Cache the states (or read the caches given), screen the candidates, build the report."""
    stored_anchors, test = caches(options, reporter)
    anchors = stored_anchors.with_token_rows()
    layers = tuple(options.layers or anchors.layers)
    missing = [layer for layer in layers if layer not in anchors.layers]
    if missing:
        raise SparseEditError(
            f"--layers {missing}: not in the anchor feature cache (it holds {list(anchors.layers)})"
        )
    grid = ScreenGrid(
        layers=layers,
        forms=tuple(options.probe),
        exempt=exempt_groups(stored_anchors.prompts, options.limit_exempt),
    )
    reporter.info(
        f"gates: screening {grid.size()} candidates on {len(stored_anchors)} cached anchor prompts and "
        f"{len(anchors) - len(stored_anchors)} earlier-token rows"
    )
    candidates, fits, seconds = screen(anchors, grid, options.folds, reporter)
    chosen = choose(candidates, options.max_firing)
    gate = chosen_gate(anchors, chosen, fits) if chosen is not None else None
    payload = {
        "kind": "sparse-edit/gates",
        "schema_version": 1,
        "tool_version": __version__,
        "python": platform.python_version(),
        "settings": options.model_dump(mode="json", exclude={"output", "overwrite"}),
        "anchors": stored_anchors.describe(),
        "test": test.describe() if test is not None else None,
        "screen": {"candidates": len(candidates), "seconds": seconds},
        "ceiling": ceiling(anchors, candidates, fits, options.max_firing, test, options.reference_lang),
        "front": [c.as_dict() for c in front(candidates)],
        "chosen": _chosen(chosen, gate, test),
        "limiting": limiting_sources(anchors, chosen, fits) if chosen is not None else None,
    }
    if chosen is None:
        reporter.warn(f"no gate keeps every harmless anchor source at or under --max-firing {options.max_firing}")
    return Screened(stored_anchors, anchors, test, candidates, fits, GatesResult(payload, gate))


def write_gates(options: GateOptions, screened: Screened, reporter: Reporter) -> GatesResult:
    """The gates folder, staged: the caches, the chosen gate (and the front's), the report and heat map."""
    payload, gate = screened.result.payload, screened.result.gate
    with staged_folder(options.output, options.overwrite, "gates") as staging:
        screened.stored_anchors.save(staging / ANCHOR_FEATURES)
        if screened.test is not None:
            screened.test.save(staging / TEST_FEATURES)
        if gate is not None:
            gate.save(staging / GATE_FILE)
        for index, candidate in front_within(screened.candidates, options.max_firing, options.front_gates):
            (staging / FRONT_DIR).mkdir(exist_ok=True)
            front_gate = chosen_gate(screened.anchors, candidate, screened.fits)
            front_gate.save(staging / FRONT_DIR / f"gate-{index}.safetensors")
        (staging / "ceiling.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        (staging / "screen.json").write_text(json.dumps([c.as_dict() for c in screened.candidates]) + "\n")
        (staging / "ceiling.md").write_text(markdown(payload), encoding="utf-8")
        if options.heatmap:
            write_heatmap(payload, staging / "ceiling.png")
    return screened.result


def _chosen(chosen: Candidate | None, gate: Gate | None, test: FeatureCache | None) -> dict[str, Any] | None:
    if chosen is None or gate is None:
        return None
    entry = chosen.as_dict()
    if test is not None:
        entry["test"] = figures(test, gate.fires(test.rows(chosen.settings.layer)), exempt=chosen.settings.exempt)
    return entry


def exempt_groups(anchors: list[Prompt], patterns: list[str] | None) -> tuple[str, ...]:
    """The harmless anchor groups ``--limit-exempt`` names (each pattern a part of a group's name)."""
    groups = sorted({prompt.group for prompt in anchors if prompt.label == "harmless"})
    chosen: list[str] = []
    for pattern in patterns or []:
        found = [group for group in groups if pattern in group]
        if not found:
            raise SparseEditError(
                f"--limit-exempt {pattern!r}: no harmless anchor group's name contains it; the groups: "
                + ", ".join(groups)
            )
        chosen += [group for group in found if group not in chosen]
    return tuple(chosen)


def front_within(candidates: list[Candidate], max_firing: float, count: int) -> list[tuple[int, Candidate]]:
    """The front's candidates within ``max_firing``, most caught first, with their index in ``candidates``."""
    kept = [c for c in front(candidates) if c.predicted["firing_max"] <= max_firing + 1e-12]
    kept.sort(key=lambda c: -c.predicted["catch_non_reference"])
    index = {id(c): i for i, c in enumerate(candidates)}
    return [(index[id(c)], c) for c in kept[:count]]


def caches(options: GateOptions, reporter: Reporter) -> tuple[FeatureCache, FeatureCache | None]:
    """The anchor and held-out feature caches: read from --features / --test-features, or one forward pass per
    prompt (the model is loaded only when a cache must be made)."""
    anchors = FeatureCache.load(options.features) if options.features else None
    test = FeatureCache.load(options.test_features, "--test-features") if options.test_features else None
    want_test = options.test_harmful is not None and test is None
    anchor_prompts = _prompts(options, reporter, held_out=False) if anchors is None else None
    test_prompts = _prompts(options, reporter, held_out=True) if want_test else None
    exempt_groups(anchor_prompts or (anchors.prompts if anchors else []), options.limit_exempt)  # before the work
    if anchor_prompts is None and test_prompts is None:
        assert anchors is not None
        return anchors, test
    from sparse_edit.model.loading import load_model

    loaded = load_model(ModelOptions.of(options))
    layers = list(options.layers or (anchors.layers if anchors else default_layers(loaded.num_layers)))
    outside = [layer for layer in layers if not 0 <= layer < loaded.num_layers]
    if outside:
        raise SparseEditError(f"--layers {outside[0]}: the model has layers 0..{loaded.num_layers - 1}")
    if anchors is not None and anchors.model_fingerprint != loaded.checkpoint.fingerprint():
        raise SparseEditError(
            f"--features {options.features}: made from another model than --model {options.model}"
        )

    def make(prompts: list[Prompt], label: str) -> FeatureCache:
        return collect_cache(
            loaded, prompts, layers, options.batch_size, reporter, label, options.system_prompt, options.max_length
        )

    if anchor_prompts is not None:
        anchors = make(anchor_prompts, "gates: anchor features")
    if test_prompts is not None:
        test = make(test_prompts, "gates: held-out features")
    assert anchors is not None
    return anchors, test


def default_layers(num_layers: int) -> list[int]:
    """Every second layer from L/3 to L-2."""
    return list(range(num_layers // 3, max(num_layers - 1, num_layers // 3 + 1), 2))


def _prompts(options: GateOptions, reporter: Reporter, held_out: bool) -> list[Prompt]:
    from sparse_edit.data.selection import prepare_prompts

    if held_out:
        assert options.test_harmful is not None and options.test_harmless is not None
        chosen = options.model_copy(update={"harmful": options.test_harmful, "harmless": options.test_harmless})
        sets = prepare_prompts(chosen, reporter, both_classes=False)
    else:
        sets = prepare_prompts(PromptOptions.of(options), reporter)
    return per_source_limit(sets.harmful + sets.harmless, options.source_limit)


def per_source_limit(prompts: list[Prompt], limit: int | None) -> list[Prompt]:
    """At most ``limit`` prompts of each source, kind and language (in source order)."""
    if limit is None:
        return prompts
    counts: dict[tuple[str, str, str], int] = {}
    kept = []
    for prompt in prompts:
        key = (prompt.label, prompt.group, prompt.lang)
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= limit:
            kept.append(prompt)
    return kept
