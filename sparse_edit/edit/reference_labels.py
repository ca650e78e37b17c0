"""Anchors labelled by what the model does in the reference language instead of by the dataset.

The goal is parity: a prompt in any language is refused exactly when the model refuses its
reference-language version. A dataset's "harmful" prompt that the model answers in the reference
language (a look-alike, or a request it judges fine) is therefore a harmless anchor in every
language: the edit must leave it answered. A "harmless" prompt the model refuses in the reference
language is left out of the harmless anchors (the edit should not teach the model to answer it
elsewhere) and is not made a harmful target either, since harmless and harmful sources may share
ids. Prompts are paired with their reference version by class and id (parallel sources).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.edit.anchor_prompts import AnchorPrompts
from sparse_edit.errors import SparseEditError
from sparse_edit.measure.judge import KeywordJudge
from sparse_edit.model.batching import encode_prompts
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.loading import LoadedModel
from sparse_edit.options import ApplyOptions

# (class, id) -> whether the model refuses the reference-language prompt of that class and id.
ReferenceVerdicts = Mapping[tuple[str, str], bool]


def reference_prompts(prompts: AnchorPrompts, reference_lang: str) -> list[Prompt]:
    """Every reference-language anchor and dev prompt of both classes, once each."""
    seen: dict[tuple[str, str], Prompt] = {}
    for prompt in prompts.ref_train + prompts.ref_dev + prompts.safe_train + prompts.safe_dev:
        if prompt.lang == reference_lang:
            seen.setdefault((prompt.label, prompt.id), prompt)
    return list(seen.values())


def reference_verdicts(
    loaded: LoadedModel, prompts: AnchorPrompts, options: ApplyOptions, reporter: Reporter
) -> dict[tuple[str, str], bool]:
    """The model's greedy replies to the reference-language prompts, judged: refused or not, by class and id."""
    items = reference_prompts(prompts, options.reference_lang)
    encoded = encode_prompts(loaded.tokenizer, items, options.system_prompt, options.max_length)
    replies = generate_replies(
        loaded,
        encoded,
        options.reference_verdict_tokens,
        options.batch_size,
        reporter,
        f"anchors: {options.reference_lang} verdicts",
    )
    judge = KeywordJudge()
    return {
        (p.label, p.id): judge.judge(p.text, p.lang, reply).label == "refusal"
        for p, reply in zip(items, replies, strict=True)
    }


def relabel(
    p: AnchorPrompts, verdicts: ReferenceVerdicts, reference_lang: str
) -> tuple[AnchorPrompts, dict[str, int]]:
    """The anchor prompts with each moved to the class the reference verdicts give it, and what moved. A prompt
    with no reference verdict keeps the dataset's label."""
    answered = {pid for (label, pid), refused in verdicts.items() if label == "harmful" and not refused}
    refused = {pid for (label, pid), is_refused in verdicts.items() if label == "harmless" and is_refused}
    kind = f"answered in {reference_lang}"

    def harmful_kept(items: list[Prompt]) -> list[Prompt]:
        return [q for q in items if q.id not in answered]

    def now_harmless(items: list[Prompt]) -> list[Prompt]:
        return [replace(q, label="harmless", kind=kind) for q in items if q.id in answered]

    def harmless_kept(items: list[Prompt]) -> list[Prompt]:
        return [q for q in items if q.id not in refused]

    moved_train, moved_dev = now_harmless(p.low_train + p.ref_train), now_harmless(p.low_dev + p.ref_dev)
    safe_train = harmless_kept(p.safe_train) + moved_train
    relabelled = AnchorPrompts(
        low_train=harmful_kept(p.low_train),
        ref_train=harmful_kept(p.ref_train),
        safe_train=safe_train,
        ref_safe_train=[q for q in safe_train if q.lang == reference_lang],
        low_dev=harmful_kept(p.low_dev),
        ref_dev=harmful_kept(p.ref_dev),
        safe_dev=harmless_kept(p.safe_dev) + moved_dev,
    )
    if not relabelled.low_train or not relabelled.ref_train:
        raise SparseEditError(
            f"--anchor-labels reference-verdict: the model answers every harmful training prompt in {reference_lang} "
            "(judged on its replies), so nothing is left to edit toward; check the prompts or use --anchor-labels "
            "dataset"
        )
    return relabelled, {
        "harmful_ids_answered_in_reference": len(answered),
        "harmless_ids_refused_in_reference": len(refused),
        "prompts_moved_to_harmless": len(moved_train) + len(moved_dev),
        "harmless_prompts_left_out": sum(1 for q in p.safe_train + p.safe_dev if q.id in refused),
    }
