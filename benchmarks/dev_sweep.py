"""Dev-split sweep on Qwen2.5-Coder-0.5B-Instruct: what moves refusal, measured without generation.

Uses the anchors, dev split and layer of examples/configs/qwen-polyrefuse-apply.toml (layer 16)
and the locate artifact of benchmarks/real_model.py (runs/qwen/locate.safetensors, made first
if missing). Everything is in memory; nothing is written but the results JSON.

1. Direction ceiling: the refusal log-odds gain on dev low-resource harmful prompts when the
   last-token residual at the layer is shifted along the refusal direction to the reference
   level × gain, by a hook (no weights changed) — what a perfect output-side fit could buy.
2. Output edits: gain × harmless-tail weight, with dev harmful / harmless gains and KL.
3. Selectivity at gain 16: the output strategy's harmless weight (--output-gamma) × tail weight,
   then larger tail weights at the default --output-gamma.
   Columns: the low languages' union vs that union without the reference language's set
   (--output-neurons low-only), harmless gains per language.
4. Neuron choice for the paper edit: the contrast set vs the same number of neurons ranked by
   attribution patching; first-order estimates, dev gains and patching ceilings.

Run: python benchmarks/dev_sweep.py [--sections ceiling,gain,gamma,tail,columns,neurons]
(needs ../shared/data; on 2 CPU cores ceiling + gain + neurons took about 20 minutes, gamma about
7, tail about 6, columns about 8). Rows of sections not run are kept from the last results file.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import torch
from common import RESULTS, SHARED, in_memory, load_qwen_anchors, merge_rows, qwen_apply_options, save

from sparse_edit.console import Reporter
from sparse_edit.edit.gather import LayerData, gather
from sparse_edit.edit.plan import Plan
from sparse_edit.edit.solver import SolveSettings
from sparse_edit.edit.strategies.base import refusal_direction
from sparse_edit.edit.strategies.output import edit_neurons, output_candidate
from sparse_edit.edit.strategies.paper import paper_candidate
from sparse_edit.measure.attribution import attribution_scores, top_neurons
from sparse_edit.measure.patching import patched_refusal_scores
from sparse_edit.measure.probes import EditContext, mean, refusal_scores, token_kl
from sparse_edit.model.loading import LoadedModel
from sparse_edit.neurons.scores import jaccard

LAYER = 16
GAINS = [2.0, 8.0, 16.0]
TAIL_WEIGHTS = [0.0, 1.0]
CEILING_GAINS = [1.0, 4.0]
SELECTIVITY_GAIN = 16.0
OUTPUT_GAMMAS = [100.0, 1000.0, 10000.0]
SELECTIVITY_TAILS = [1.0, 4.0]
LARGE_TAILS = [16.0, 64.0]
SECTIONS = ("ceiling", "gain", "gamma", "tail", "columns", "neurons")


@contextmanager
def direction_shift(loaded: LoadedModel, direction: torch.Tensor, level: float, gain: float) -> Iterator[None]:
    layer = loaded.family.layers(loaded.model)[LAYER]

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        last = hidden[:, -1, :]
        shift = (gain * (level - last.float() @ direction)).clamp(min=0)
        last += (shift[:, None] * direction).to(hidden.dtype)
        return output

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    sections = set(parser.parse_args().sections.split(","))
    if unknown := sections - set(SECTIONS):
        raise SystemExit(f"--sections: unknown {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (PolyRefuse) is not present")
        return
    options = qwen_apply_options()
    artifact, loaded, low_langs, anchors = load_qwen_anchors(options)
    reporter = Reporter(quiet=True)
    ref = options.reference_lang
    bs = options.batch_size
    output_set = edit_neurons(artifact, LAYER, "low-union", ref, low_langs, options.max_edit_neurons)
    plan = Plan(["output"], [(LAYER,)], {("output", LAYER): output_set}, ["neurons", "residual"])
    started = time.perf_counter()
    data = gather(loaded, anchors, [LAYER], plan, options, reporter)[LAYER]
    base_harmful = refusal_scores(loaded, anchors.low_dev, bs)
    base_harmless = refusal_scores(loaded, anchors.safe_dev, bs)
    rows: list[dict[str, Any]] = []

    def measure(
        section: str, name: str, edit: EditContext, harmless_edit: EditContext | None = None, **extra: Any
    ) -> None:
        harmful = refusal_scores(loaded, anchors.low_dev, bs, edit)
        harmless = refusal_scores(loaded, anchors.safe_dev, bs, harmless_edit or edit)
        by_lang = {lang: mean(harmful[lang]) - mean(base_harmful[lang]) for lang in harmful}
        safe_by_lang = {lang: mean(harmless[lang]) - mean(base_harmless[lang]) for lang in harmless}
        row = {
            "name": name,
            "section": section,
            "gain_harmful": mean(list(by_lang.values())),
            "gain_harmless": mean(list(safe_by_lang.values())),
            "gain_harmful_by_lang": by_lang,
            "gain_harmless_by_lang": safe_by_lang,
            **extra,
        }
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if not k.endswith("by_lang")})

    direction = refusal_direction(data).float()
    level = float((data.ref_rows["residual"].float() @ direction).mean())
    for gain in CEILING_GAINS if "ceiling" in sections else []:
        measure(
            "ceiling",
            f"direction ceiling x{gain:g} (hook, last token)",
            partial(direction_shift, loaded, direction, level, gain),
            # The hook shifts every prompt it sees, so it is measured on harmful prompts only.
            partial(direction_shift, loaded, direction, level, 0.0),
        )
    solve = SolveSettings(
        options.output_gamma, options.lam, options.rank, options.nullspace, options.nullspace_threshold
    )

    def measure_output(
        section: str,
        name: str,
        settings: SolveSettings,
        gain: float,
        weight: float,
        columns: tuple[torch.Tensor, LayerData] | None = None,
    ) -> None:
        neurons, layer_data = columns or (output_set, data)
        edits, diag = output_candidate(LAYER, neurons, loaded.checkpoint, layer_data, settings, gain, 1.0, weight)
        context = in_memory(loaded, edits)
        kl, _ = token_kl(loaded, anchors.safe_dev, bs, context)
        measure(
            section,
            name,
            context,
            kl_harmless=kl,
            fit_dev=diag.get("fit_dev"),
            harmless_tail_ratio_dev=diag.get("harmless_tail_ratio_dev"),
            changed_parameters=sum(e.changed_parameters for e in edits),
        )

    for gain in GAINS if "gain" in sections else []:
        for weight in TAIL_WEIGHTS:
            measure_output("gain", f"output@{LAYER} gain {gain:g} tail weight {weight:g}", solve, gain, weight)
    for gamma in OUTPUT_GAMMAS if "gamma" in sections else []:
        for weight in SELECTIVITY_TAILS:
            measure_output(
                "gamma",
                f"output@{LAYER} gain {SELECTIVITY_GAIN:g} tail weight {weight:g} output-gamma {gamma:g}",
                replace(solve, gamma=gamma),
                SELECTIVITY_GAIN,
                weight,
            )
    for weight in LARGE_TAILS if "tail" in sections else []:
        measure_output(
            "tail",
            f"output@{LAYER} gain {SELECTIVITY_GAIN:g} tail weight {weight:g}",
            solve,
            SELECTIVITY_GAIN,
            weight,
        )
    if "columns" in sections:
        only = edit_neurons(artifact, LAYER, "low-only", ref, low_langs, options.max_edit_neurons)
        only_plan = Plan(["output"], [(LAYER,)], {("output", LAYER): only}, ["neurons", "residual"])
        only_data = gather(loaded, anchors, [LAYER], only_plan, options, reporter)[LAYER]
        for label, columns in (("low-union", (output_set, data)), ("low-only", (only, only_data))):
            measure_output(
                "columns",
                f"output@{LAYER} gain {SELECTIVITY_GAIN:g} tail weight 1 columns {label}",
                solve,
                SELECTIVITY_GAIN,
                1.0,
                columns,
            )
    previous_path = RESULTS / "qwen-dev-sweep.json"
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    if "neurons" not in sections:
        payload = dict(previous, rows=merge_rows(previous.get("rows", []), rows), seconds=None)
        print(f"wrote {save('qwen-dev-sweep', payload)}")
        return
    contrast = artifact.neuron_set(options.neuron_lang or ref, LAYER)
    scores = attribution_scores(loaded, anchors.low_train, anchors.ref_train, LAYER, bs, reporter)
    ranked = top_neurons(scores, int(contrast.numel()))
    count = len(anchors.low_train)
    paper_plan = Plan(["paper"], [(LAYER,)], {("paper", LAYER): contrast}, ["mlp_input"])
    paper_data = gather(loaded, anchors, [LAYER], paper_plan, options, reporter)[LAYER]
    paper_solve = SolveSettings(
        options.gamma, options.lam, options.rank, options.nullspace, options.nullspace_threshold
    )
    for name, neurons in (("contrast", contrast), ("attribution", ranked)):
        edits, diag = paper_candidate(LAYER, neurons, loaded.checkpoint, ["gate"], paper_data, paper_solve)
        context = in_memory(loaded, edits)
        patched = patched_refusal_scores(
            loaded, anchors.low_dev, anchors.ref_dev, {e.layer: e.neurons for e in edits}, bs
        )
        kl, _ = token_kl(loaded, anchors.safe_dev, bs, context)
        measure(
            "neurons",
            f"paper@{LAYER} neurons by {name}",
            context,
            kl_harmless=kl,
            fit_dev=diag.get("fit_dev"),
            neurons=int(neurons.numel()),
            changed_parameters=sum(e.changed_parameters for e in edits),
            attribution_estimate=float(scores[neurons].sum()) / count,
            patching_ceiling=mean([mean(patched[lang]) - mean(base_harmful[lang]) for lang in patched]),
        )
    overlap = jaccard(contrast, ranked)
    payload = {
        "model": str(options.model),
        "layer": LAYER,
        "dev_prompts": {"low_harmful": len(anchors.low_dev), "harmless": len(anchors.safe_dev)},
        "base_refusal_log_odds_harmful": {lang: mean(v) for lang, v in base_harmful.items()},
        "refusal_level": level,
        "attribution_jaccard_to_contrast_set": overlap,
        "attribution_positive_total": float(scores.clamp(min=0).sum()) / count,
        "rows": merge_rows(previous.get("rows", []), rows),
        "seconds": time.perf_counter() - started,
    }
    print(f"wrote {save('qwen-dev-sweep', payload)}")


if __name__ == "__main__":
    main()
