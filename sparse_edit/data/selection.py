"""Which prompts a run uses: sources loaded, languages checked, per-language slices (--skip, --limit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import (
    Label,
    LoadedSource,
    Prompt,
    by_language,
    describe_missing,
    load_sources,
    missing_parallel_ids,
)
from sparse_edit.errors import SparseEditError
from sparse_edit.options import PromptOptions


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


def _warn_left_out_sources(
    flag: str, sources: list[LoadedSource], kept: list[Prompt], languages: set[str], reporter: Reporter
) -> None:
    """Warn when a slice keeps nothing of a source in a language it has prompts in: the slices take each
    language's first prompts in source order, so a later source can drop out unnoticed."""
    if len(sources) < 2:
        return
    kept_keys = {(p.lang, p.id) for p in kept}
    for source in sources:
        present = {p.lang for p in source.prompts if p.lang in languages}
        contributing = {p.lang for p in source.prompts if (p.lang, p.id) in kept_keys}
        left_out = sorted(present - contributing)
        if left_out:
            reporter.warn(
                f"{flag} slice each language's prompts in source order: {source.spec} contributes none in "
                f"{', '.join(left_out)}; raise the limit or select ids per source (FILE@IDS)"
            )


def prepare_prompts(options: PromptOptions, reporter: Reporter, both_classes: bool = True) -> PromptSets:
    """Load, filter and check the harmful and harmless prompt sources.

    With ``both_classes`` false (eval), a language needs prompts of one class only: attack success
    is reported where it has harmful prompts, over-refusal where it has harmless ones.
    """
    harmful, harmful_sources = load_sources(options.harmful, "harmful", "--harmful")
    harmless, harmless_sources = load_sources(options.harmless, "harmless", "--harmless")
    found = sorted({p.lang for p in harmful} | {p.lang for p in harmless})
    languages = list(options.languages) if options.languages else found
    if options.reference_lang not in languages:
        languages.insert(0, options.reference_lang)
    harmful_langs, harmless_langs = {p.lang for p in harmful}, {p.lang for p in harmless}
    for lang in languages:
        for label, flag, present in (
            ("harmful", "--harmful", harmful_langs),
            ("harmless", "--harmless", harmless_langs),
        ):
            # eval needs one class per language, apply and locate both
            if lang not in present and (both_classes or lang not in harmful_langs | harmless_langs):
                raise SparseEditError(
                    f"--languages: {lang} has no {label} prompts in {flag}; add a source or drop it"
                )
    keep = set(languages)
    harmful = _slice([p for p in harmful if p.lang in keep], options.skip, options.limit)
    harmless_skip = options.skip if options.harmless_skip is None else options.harmless_skip
    harmless = _slice(
        [p for p in harmless if p.lang in keep], harmless_skip, options.harmless_limit or options.limit
    )
    for flag, loaded, kept in (
        ("--skip/--limit", harmful_sources, harmful),
        ("--harmless-skip/--harmless-limit", harmless_sources, harmless),
    ):
        _warn_left_out_sources(flag, loaded, kept, keep, reporter)
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
