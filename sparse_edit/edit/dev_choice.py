"""Choosing among candidate edits on the dev split: refusal log-odds, KL and judged replies, and the rule."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from sparse_edit.console import Reporter
from sparse_edit.edit.anchors import Anchors
from sparse_edit.edit.candidates import Candidate
from sparse_edit.edit.delta import applied_in_memory
from sparse_edit.measure.patching import patched_refusal_scores
from sparse_edit.measure.probes import RefusalScores, mean, rate_gains, refusal_rates, refusal_scores, token_kl
from sparse_edit.model.batching import Encoded
from sparse_edit.model.loading import LoadedModel
from sparse_edit.model.trunk import TrunkCache
from sparse_edit.options import ApplyOptions

SELECTION_RULE = (
    "largest selective gain (mean refusal log-odds gain on dev low-resource harmful prompts minus the gain on dev "
    "harmless prompts; with --dev-generate, the judged refusal-rate gain of generated replies on dev low-resource "
    "harmful prompts minus that on dev harmless prompts, log-odds breaking ties) among candidates whose mean "
    "harmless per-token KL is within --kl-budget; if none is, the candidate with the smallest KL"
)


def measure_candidates(
    loaded: LoadedModel,
    candidates: list[Candidate],
    anchors: Anchors,
    stored_dtypes: dict[str, torch.dtype],
    options: ApplyOptions,
    reporter: Reporter,
) -> None:
    """Refusal log-odds on dev prompts and harmless KL, base vs each candidate edit (in memory); with
    --dev-generate also the judged refusal rate of generated replies."""
    with _trunk_below(loaded, candidates):
        bs = options.batch_size
        harmful, harmless = anchors.low_dev, anchors.safe_dev
        base_harmful = refusal_scores(loaded, harmful, bs) if harmful else {}
        # Full passes, like token_kl's that give the edited model's harmless scores below.
        base_harmless = refusal_scores(loaded, harmless, bs, all_positions=True) if harmless else {}
        tokens = options.dev_generate

        def rates(items: list[Encoded], edit: Any = None) -> dict[str, float]:
            return refusal_rates(loaded, items, tokens, bs, reporter, *([edit] if edit else []))

        base_rates = {"harmful": rates(harmful), "harmless": rates(harmless)} if tokens else {}
        with reporter.progress("dev probes", len(candidates), unit="candidates") as progress:
            for candidate in candidates:

                def edit(candidate: Candidate = candidate) -> Any:
                    return applied_in_memory(loaded.model, candidate.edits, stored_dtypes)

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


def _trunk_below(loaded: LoadedModel, candidates: list[Candidate]) -> AbstractContextManager[None]:
    """Every candidate edits at or above the lowest layer any of them edits: the layers below run once per dev input."""
    edited_layers = sorted({edit.layer for candidate in candidates for edit in candidate.edits})
    if not edited_layers:
        return nullcontext()
    return TrunkCache(loaded, min(edited_layers)).replaying(edited_layers)


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
