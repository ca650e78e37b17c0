"""The prompts an edit is fitted on, split by id into train and dev (the same ids in every language)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields, replace

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt, load_sources
from sparse_edit.data.selection import prepare_prompts
from sparse_edit.edit.anchor_prompts import AnchorPrompts
from sparse_edit.edit.reference_labels import reference_verdicts, relabel
from sparse_edit.errors import SparseEditError
from sparse_edit.model.batching import Encoded, encode_prompts
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.loading import LoadedModel
from sparse_edit.options import ApplyOptions, PromptOptions


def is_dev(prompt_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


@dataclass
class Anchors:
    """Encoded prompts by role; train rows feed the solve, dev rows only the diagnostics."""

    low_train: list[Encoded]
    ref_train: list[Encoded]
    safe_train: list[Encoded]
    ref_safe_train: list[Encoded]
    low_dev: list[Encoded]
    ref_dev: list[Encoded]
    safe_dev: list[Encoded]
    # The harmless training prompts followed by the model's own replies, counted from the reply on
    # (--harmless-reply-tokens): more harmless tokens, never rows.
    safe_replies: list[Encoded] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Prompts per role, for the manifest (replies only when there are any)."""
        return {role: len(items) for role, items in vars(self).items() if items or role != "safe_replies"}


def _by_group_in_turn(prompts: list[Prompt]) -> list[Prompt]:
    """Each language's prompts in turns over their groups (source and kind): the first of every group, then the
    second of every group, ...; a cap then takes a share of every group instead of the first source's. Every
    language keeps the positions it had (a language with one group is left as it was)."""
    queues: dict[str, dict[str, list[Prompt]]] = {}
    for prompt in prompts:
        queues.setdefault(prompt.lang, {}).setdefault(prompt.group, []).append(prompt)
    turns: dict[str, list[Prompt]] = {}
    for lang, groups in queues.items():
        depth = max(len(queue) for queue in groups.values())
        turns[lang] = [queue[i] for i in range(depth) for queue in groups.values() if i < len(queue)]
    position = dict.fromkeys(queues, 0)
    ordered = []
    for prompt in prompts:
        ordered.append(turns[prompt.lang][position[prompt.lang]])
        position[prompt.lang] += 1
    return ordered


def _cap_per_language(prompts: list[Prompt], limit: int) -> list[Prompt]:
    seen: dict[str, int] = {}
    kept = []
    for prompt in prompts:
        if seen.get(prompt.lang, 0) < limit:
            kept.append(prompt)
            seen[prompt.lang] = seen.get(prompt.lang, 0) + 1
    return kept


def select_anchor_prompts(options: ApplyOptions, low_langs: list[str], reporter: Reporter) -> AnchorPrompts:
    """Load the prompt sources and split them by id into train and dev for each role."""
    sets = prepare_prompts(PromptOptions.of(options), reporter)
    ref = options.reference_lang

    def split(prompts: list[Prompt], dev_limit: int, in_turn: bool = False) -> tuple[list[Prompt], list[Prompt]]:
        dev = [p for p in prompts if is_dev(p.id, options.dev_fraction, options.seed)]
        train = [p for p in prompts if not is_dev(p.id, options.dev_fraction, options.seed)]
        return train, _cap_per_language(_by_group_in_turn(dev) if in_turn else dev, dev_limit)

    low_train, low_dev = split([p for p in sets.harmful if p.lang in low_langs], options.dev_limit)
    ref_train, ref_dev = split([p for p in sets.harmful if p.lang == ref], options.dev_limit)
    harmless_dev_limit = options.dev_harmless_limit or options.dev_limit
    if options.dev_harmless:
        safe_train = sets.harmless
        safe_dev = _cap_per_language(
            _by_group_in_turn(held_out_dev(options.dev_harmless, sets.harmless, sets.languages)),
            harmless_dev_limit,
        )
    else:
        safe_train, safe_dev = split(sets.harmless, harmless_dev_limit, in_turn=True)
    if not low_train:
        raise SparseEditError(f"--low-langs: no harmful training prompts in {', '.join(low_langs)}")
    if not ref_train:
        raise SparseEditError(f"--reference-lang {ref}: no harmful training prompts in that language")
    if not safe_train:
        raise SparseEditError("--harmless: no harmless training prompts left after the dev split")
    ref_safe = [p for p in safe_train if p.lang == ref]
    return AnchorPrompts(low_train, ref_train, safe_train, ref_safe, low_dev, ref_dev, safe_dev)


def build_anchors(
    options: ApplyOptions, loaded: LoadedModel, prompts: AnchorPrompts, reporter: Reporter, *, replies: bool = True
) -> Anchors:
    """The anchors by role, encoded; with ``replies`` False the model's replies (--harmless-reply-tokens) are left
    for ``add_replies``, so a caller can say what generating them will cost first."""
    if options.anchor_labels == "reference-verdict":
        verdicts = reference_verdicts(loaded, prompts, options, reporter)
        prompts, moved = relabel(prompts, verdicts, options.reference_lang)
        reporter.info(
            f"anchors labelled by the model's {options.reference_lang} verdicts: "
            f"{moved['harmful_ids_answered_in_reference']} harmful ids answered in {options.reference_lang} "
            f"({moved['prompts_moved_to_harmless']} prompts) are harmless anchors, "
            f"{moved['harmless_ids_refused_in_reference']} harmless ids refused there "
            f"({moved['harmless_prompts_left_out']} prompts) are left out"
        )
    roles = {
        role.name: encode_prompts(
            loaded.tokenizer, getattr(prompts, role.name), options.system_prompt, options.max_length
        )
        for role in fields(AnchorPrompts)
    }
    anchors = Anchors(**roles)
    return add_replies(anchors, loaded, options, reporter) if replies else anchors


def held_out_dev(specs: list[str], anchors: list[Prompt], languages: list[str]) -> list[Prompt]:
    """The --dev-harmless prompts in the edited languages, checked to share no text with the anchors."""
    prompts, _ = load_sources(specs, "harmless", "--dev-harmless")
    edited = set(languages)
    kept = [p for p in prompts if p.lang in edited]
    if not kept:
        raise SparseEditError(
            f"--dev-harmless: no prompt in {', '.join(languages)}; give dev prompts in the edited languages"
        )
    anchor_texts = {(p.lang, p.text) for p in anchors}
    shared = [p for p in kept if (p.lang, p.text) in anchor_texts]
    if shared:
        raise SparseEditError(
            f"--dev-harmless: {len(shared)} prompt(s) are also in --harmless (e.g. {shared[0].lang} id {shared[0].id}); "
            "dev prompts must be held out of the anchors"
        )
    return kept


def add_replies(anchors: Anchors, loaded: LoadedModel, options: ApplyOptions, reporter: Reporter) -> Anchors:
    """The anchors with the model's replies to the harmless training prompts (none without
    --harmless-reply-tokens)."""
    if not options.harmless_reply_tokens or anchors.safe_replies:
        return anchors
    return replace(anchors, safe_replies=with_replies(loaded, anchors.safe_train, options, reporter))


def with_replies(
    loaded: LoadedModel, encoded: list[Encoded], options: ApplyOptions, reporter: Reporter
) -> list[Encoded]:
    """Each prompt followed by the model's greedy reply (re-tokenised), counted from the reply on."""
    replies = generate_replies(
        loaded, encoded, options.harmless_reply_tokens, options.batch_size, reporter, "anchors: harmless replies"
    )
    extended = []
    for item, reply in zip(encoded, replies, strict=True):
        ids = tuple(loaded.tokenizer(reply, add_special_tokens=False)["input_ids"])
        if ids:  # an empty reply adds no token
            extended.append(Encoded(item.prompt, item.ids + ids, item.truncated, counted_tail=len(ids)))
    return extended
