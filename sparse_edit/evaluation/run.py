"""``sparse-edit eval``: generate, judge and measure per language; optional before/after comparison."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import by_language
from sparse_edit.data.selection import prepare_prompts
from sparse_edit.evaluation.gates import Gate, check_gate_languages, check_gates
from sparse_edit.evaluation.journal import ReplyJournal, base_cache_journal, settings_key
from sparse_edit.evaluation.parity import parallel_languages, parity_report
from sparse_edit.evaluation.report_schema import EvalReport, finite
from sparse_edit.evaluation.tables import ModelRun, changed_prompts, language_table, pooled_tests, summary_metrics
from sparse_edit.io.layout import EVAL_KIND
from sparse_edit.measure.judge import GuardJudge, Judge, KeywordJudge
from sparse_edit.measure.probes import RefusalScores, kl_between, refusal_scores
from sparse_edit.measure.representation import last_token_states, probe_accuracy, separation
from sparse_edit.model.batching import Batch, Encoded, encode_prompts
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.incremental import replies_from_drafts
from sparse_edit.model.loading import LoadedModel, load_model
from sparse_edit.options import EvalOptions, ModelOptions, PromptOptions
from sparse_edit.options.traits import NOT_IN_REPLY_KEY, fields_with
from sparse_edit.version import __version__

SCHEMA_VERSION = 1


def make_judge(options: EvalOptions) -> Judge:
    if options.judge == "keyword":
        return KeywordJudge()
    from pathlib import Path

    from sparse_edit.errors import SparseEditError

    path = Path(options.judge)
    if not (path / "config.json").is_file():
        raise SparseEditError(f"--judge {options.judge}: use keyword or the folder of a local guard model")
    return GuardJudge(path)


def measure(
    loaded: LoadedModel,
    harmful: list[Encoded],
    harmless: list[Encoded],
    options: EvalOptions,
    judge: Judge,
    reporter: Reporter,
    tag: str,
    journal: ReplyJournal | None = None,
    drafts: dict[str, list[list[int]]] | None = None,
    tokens_out: dict[str, list[list[int]]] | None = None,
    score_harmless: bool = True,
) -> ModelRun:
    """Replies, verdicts and probes of one model. ``drafts`` (per class, e.g. the base model's reply
    tokens) find the replies incrementally; ``tokens_out`` receives this model's reply tokens. Without
    ``score_harmless`` the harmless log-odds are left empty, for the caller to read off passes it makes anyway."""
    bs = options.batch_size

    def replies(items: list[Encoded], label: str) -> list[str]:
        known = journal.known(tag, label, [item.prompt for item in items]) if journal is not None else None
        record = (lambda rows: journal.record(tag, label, rows)) if journal is not None else None
        if drafts is not None:
            return replies_from_drafts(
                loaded,
                items,
                drafts[label],
                options.max_new_tokens,
                bs,
                reporter,
                f"{tag}: {label}",
                known,
                record,
            )
        tokens: list[list[int]] = []
        found = generate_replies(
            loaded,
            items,
            options.max_new_tokens,
            bs,
            reporter,
            f"{tag}: {label}",
            known,
            record,
            tokens_out=tokens,
        )
        if tokens_out is not None:
            # A reply taken from a journal has no tokens; its text, tokenized again, is a draft as good as any
            # (the edited model checks every draft token, so a draft only decides how much is generated).
            tokens_out[label] = [
                row or (loaded.tokenizer.encode(reply, add_special_tokens=False) if reply else [])
                for row, reply in zip(tokens, found, strict=True)
            ]
        return found

    harmful_replies = replies(harmful, "harmful")
    harmless_replies = replies(harmless, "harmless")
    run = ModelRun(
        harmful_replies,
        judge.judge_many(
            [(e.prompt.text, e.prompt.lang, r) for e, r in zip(harmful, harmful_replies, strict=True)]
        ),
        harmless_replies,
        judge.judge_many(
            [(e.prompt.text, e.prompt.lang, r) for e, r in zip(harmless, harmless_replies, strict=True)]
        ),
        refusal_scores(loaded, harmful, bs),
        refusal_scores(loaded, harmless, bs) if score_harmless else {},
    )
    if options.representation:
        states_harmful = last_token_states(loaded, harmful, bs)
        states_harmless = last_token_states(loaded, harmless, bs)
        for lang in sorted({e.prompt.lang for e in harmful} & {e.prompt.lang for e in harmless}):
            a = states_harmful[[i for i, e in enumerate(harmful) if e.prompt.lang == lang]]
            b = states_harmless[[i for i, e in enumerate(harmless) if e.prompt.lang == lang]]
            run.representation[lang] = {"separation": separation(a, b), "probe_accuracy": probe_accuracy(a, b)}
    return run


def paired_harmless_passes(
    base: LoadedModel,
    edited: LoadedModel,
    harmless: list[Encoded],
    batch_size: int,
    base_run: ModelRun,
    edited_run: ModelRun,
    reporter: Reporter,
) -> tuple[float, float]:
    """KL(base ‖ edited) over the harmless prompts; the same two passes give each run its harmless log-odds."""
    base_scores, edited_scores = RefusalScores(base.tokenizer), RefusalScores(edited.tokenizer)
    with reporter.progress("KL: harmless", len(harmless)) as task:

        def on_edited(batch: Batch, logits: torch.Tensor) -> None:
            edited_scores.add(batch, logits)
            task.advance(len(batch.items))

        kl = kl_between(
            edited,
            lambda inputs: base.model(**inputs, use_cache=False).logits,
            lambda inputs: edited.model(**inputs, use_cache=False).logits,
            harmless,
            batch_size,
            on_edited=on_edited,
            on_base=base_scores.add,
        )
    base_run.log_odds_harmless = base_scores.by_lang
    edited_run.log_odds_harmless = edited_scores.by_lang
    return kl


@dataclass
class EvalResult:
    report: EvalReport  # built as the model report.json is written from
    replies: list[dict[str, Any]]
    gates: list[dict[str, Any]]
    journal: ReplyJournal | None = None

    @property
    def tripped(self) -> list[str]:
        return [gate["expression"] for gate in self.gates if gate["tripped"]]


def run_eval(
    options: EvalOptions, reporter: Reporter, journal_folder: Path | None = None, gates: list[Gate] | None = None
) -> EvalResult:
    """Generate, judge and measure; with ``journal_folder``, replies are journaled beside it as they come
    in and a rerun with the same settings resumes from them. ``gates``: ``options.fail_if`` already parsed."""
    if gates is None:
        gates = check_gates(options.fail_if, has_base=options.base is not None)
    torch.manual_seed(options.seed)
    sets = prepare_prompts(PromptOptions.of(options), reporter, both_classes=False)
    check_gate_languages(
        gates,
        {
            "harmful": {p.lang for p in sets.harmful},
            "harmless": {p.lang for p in sets.harmless},
            "parallel": parallel_languages(sets.harmful, sets.harmless, options.reference_lang),
        },
    )
    judge = make_judge(options)
    model_settings = ModelOptions.of(options)
    edited_model = load_model(model_settings)
    base_model = load_model(model_settings, options.base) if options.base is not None else None

    def encode(loaded: LoadedModel, prompts: list[Any]) -> list[Encoded]:
        return encode_prompts(loaded.tokenizer, prompts, options.system_prompt, options.max_length)

    harmful = encode(edited_model, sets.harmful)
    harmless = encode(edited_model, sets.harmless)
    journal = None
    if journal_folder is not None:
        journal = ReplyJournal.open(journal_folder, reply_settings_key(options, edited_model, base_model))
        if journal.replies:
            reporter.warn(
                f"resuming: {len(journal.replies)} replies of an interrupted run reused from {journal.path}"
            )
    # With --reuse-base-replies the base model's reply tokens are the drafts the edited model's replies
    # are found from (generated only where they differ).
    drafts: dict[str, list[list[int]]] | None = (
        {} if base_model is not None and options.reuse_base_replies else None
    )
    base_journal = journal
    if base_model is not None and options.base_cache is not None:
        base_journal = base_cache_journal(options.base_cache, base_reply_key(options, base_model))
        reporter.info(f"base: {len(base_journal.replies)} cached replies of these settings in {base_journal.path}")
    base_run = (
        measure(
            base_model,
            harmful,
            harmless,
            options,
            judge,
            reporter,
            "base",
            base_journal,
            tokens_out=drafts,
            score_harmless=False,
        )
        if base_model
        else None
    )
    edited_run = measure(
        edited_model,
        harmful,
        harmless,
        options,
        judge,
        reporter,
        "edited",
        journal,
        drafts,
        score_harmless=base_model is None,  # with a base, the KL passes below give them
    )
    kl = None
    if base_model is not None and base_run is not None:
        kl = paired_harmless_passes(
            base_model, edited_model, harmless, options.batch_size, base_run, edited_run, reporter
        )
    table = language_table(sets, harmful, harmless, edited_run, base_run)
    changed = changed_prompts(harmful, harmless, edited_run, base_run) if base_run is not None else None
    parity = (
        parity_report(
            [e.prompt for e in harmful],
            [e.prompt for e in harmless],
            edited_run.verdicts(),
            base_run.verdicts(),
            options.reference_lang,
        )
        if base_run is not None
        else None
    )
    metrics = summary_metrics(table, options.reference_lang, kl, changed, parity)
    gate_rows = []
    for gate in gates:
        tripped, value = gate.evaluate(metrics)
        gate_rows.append({"expression": gate.text, "value": value, "tripped": tripped})
    # The run returns the typed report (NaN as null): a field that breaks its schema fails here, where it is made.
    report = EvalReport.model_validate(
        finite(
            {
                "kind": EVAL_KIND,
                "schema_version": SCHEMA_VERSION,
                "tool_version": __version__,
                "settings": options.model_dump(mode="json", exclude={"output", "overwrite"}),
                "judge": judge.name,
                "models": {"edited": str(options.model), "base": str(options.base) if options.base else None},
                "reference_lang": options.reference_lang,
                "counts": {
                    lang: {"harmful": len(h), "harmless": len(by_language(sets.harmless).get(lang, []))}
                    for lang, h in by_language(sets.harmful).items()
                },
                "languages": table,
                "summary": metrics,
                "pooled_tests": pooled_tests(harmful, harmless, edited_run, base_run, options.reference_lang)
                if base_run is not None
                else None,
                "changed": changed,
                "parity": parity,
                "gates": gate_rows,
            }
        )
    )
    replies = _reply_rows(harmful, harmless, edited_run, "edited")
    if base_run is not None:
        replies += _reply_rows(harmful, harmless, base_run, "base")
    return EvalResult(report, replies, gate_rows, journal)


# Settings that do not change a generated reply; everything else is part of the journal's key.
NOT_REPLY_SETTINGS = set(fields_with(EvalOptions, NOT_IN_REPLY_KEY))


def reply_settings_key(options: EvalOptions, edited: LoadedModel, base: LoadedModel | None) -> str:
    settings = options.model_dump(mode="json", exclude=NOT_REPLY_SETTINGS)
    # The weights themselves, not only their layout: a journal of another model of the same shapes is not ours.
    settings["weights"] = [edited.checkpoint.weights_sha256(), base.checkpoint.weights_sha256() if base else None]
    settings["device"] = edited.device
    return settings_key(settings)


def base_reply_key(options: EvalOptions, base: LoadedModel) -> str:
    """The key of the base model's replies alone (``--base-cache``): the edited model plays no part in them."""
    settings = options.model_dump(mode="json", exclude=NOT_REPLY_SETTINGS | {"model", "base"})
    settings["weights"] = base.checkpoint.weights_sha256()
    settings["device"] = base.device
    template = getattr(base.tokenizer, "chat_template", None)
    settings["chat_template"] = settings_key({"template": template}) if template else None
    return settings_key(settings)


def _reply_rows(harmful: list[Encoded], harmless: list[Encoded], run: ModelRun, tag: str) -> list[dict[str, Any]]:
    rows = []
    for items, replies, verdicts, label in (
        (harmful, run.harmful_replies, run.harmful_verdicts, "harmful"),
        (harmless, run.harmless_replies, run.harmless_verdicts, "harmless"),
    ):
        for item, reply, verdict in zip(items, replies, verdicts, strict=True):
            rows.append(
                {
                    "model": tag,
                    "class": label,
                    "id": item.prompt.id,
                    "lang": item.prompt.lang,
                    "prompt": item.prompt.text,
                    "reply": reply,
                    "verdict": verdict.label,
                    "reason": verdict.reason,
                }
            )
    return rows


def dumps(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"
