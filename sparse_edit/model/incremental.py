"""Greedy replies of an edited model from the base model's replies, at the price of a forward pass.

Fed a cached reply teacher-forced, the edited model predicts every next token of it in one parallel
pass. Where it predicts the cached token, greedy decoding would have produced that token too, so the
longest such prefix is accepted (speculative decoding with the cached reply as the draft) and only
the rest is generated, from the first divergence. An edit that leaves a prompt's reply unchanged
costs one pass for it; one that changes the first token costs what plain generation costs.

A token is accepted only when the model's top logit leads the runner-up by more than a margin, a
share of the logit's size set by the compute dtype's precision: a near-tie is decided by rounding
(batch composition, a cache or none), so it is generated instead, as plain greedy decoding decides it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.model.batching import Encoded, batch_memory_guard, batches, last_logits_kwargs
from sparse_edit.model.generation import decode_reply, eos_ids, generate_tokens, split_known
from sparse_edit.model.loading import LoadedModel

# The lead over the runner-up a token needs to be accepted, as a share of max(1, |top logit|): many
# times each dtype's rounding (float32 eps 1.2e-7, bfloat16 7.8e-3, float16 9.8e-4), so that a lead
# this large cannot be reversed by the different order of sums in a cached or batched pass.
RELATIVE_MARGIN = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class IncrementalReplies:
    """The replies, their tokens, and how much of them the teacher-forced pass settled."""

    replies: list[str]
    tokens: list[list[int]]
    accepted_tokens: int  # cached tokens accepted as they were
    generated_rows: int  # prompts that needed sequential generation after their accepted prefix

    def stats(self) -> dict[str, int]:
        return {
            "prompts": len(self.replies),
            "accepted_tokens": self.accepted_tokens,
            "generated_rows": self.generated_rows,
        }


@dataclass(frozen=True)
class _Verified:
    prefix: list[int]  # the reply's tokens known from the teacher-forced pass
    complete: bool  # nothing left to generate
    accepted: int


def _verify_batch(
    loaded: LoadedModel,
    items: list[Encoded],
    drafts: list[list[int]],
    max_new_tokens: int,
    margin: float | None,
    settled: Callable[[Prompt, str], bool] | None,
) -> list[_Verified]:
    pad = int(loaded.tokenizer.pad_token_id)
    stop_ids = eos_ids(loaded)
    forced = [replace(item, ids=item.ids + tuple(draft)) for item, draft in zip(items, drafts, strict=True)]
    (batch,) = list(batches(forced, len(forced), pad))
    where = {id(item): i for i, item in enumerate(forced)}
    order = [where[id(item)] for item in batch.items]  # batches() sorts by length
    keep = max(len(draft) for draft in drafts) + 1
    with batch_memory_guard(len(items)), torch.inference_mode():
        logits = loaded.model(
            **batch.model_inputs(loaded.input_device), use_cache=False, **last_logits_kwargs(loaded.model, keep)
        ).logits[:, -keep:, :]
        top = logits.float().topk(2, dim=-1)
    relative = RELATIVE_MARGIN.get(logits.dtype, 3e-2) if margin is None else margin
    needed = relative * top.values[..., 0].abs().clamp(min=1.0)
    predicted = top.indices[..., 0].cpu()
    lead = (top.values[..., 0] - top.values[..., 1] - needed).cpu()  # > 0: decided beyond rounding
    verified: list[_Verified | None] = [None] * len(items)
    for row, index in enumerate(order):
        item, draft = items[index], drafts[index]

        def ended(tokens: list[int], prompt: Prompt = item.prompt) -> bool:
            # How plain generation stops a reply: an end token, the length limit, or a settled verdict.
            if not tokens:
                return False
            if tokens[-1] in stop_ids or len(tokens) >= max_new_tokens:
                return True
            return settled is not None and settled(prompt, decode_reply(loaded.tokenizer, tokens))

        # Left padding puts every row's reply at the end: its L + 1 predictions are the last L + 1 columns.
        guesses = predicted[row, keep - len(draft) - 1 :].tolist()
        leads = lead[row, keep - len(draft) - 1 :].tolist()
        k = 0
        while k < len(draft) and guesses[k] == draft[k] and leads[k] > 0:
            k += 1
        prefix = list(draft[:k])
        if not ended(prefix) and leads[k] > 0:
            prefix.append(int(guesses[k]))
        verified[index] = _Verified(prefix, ended(prefix), k)
    return [v for v in verified if v is not None]


def incremental_replies(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    drafts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    reporter: Reporter,
    label: str = "replies",
    settled: Callable[[Prompt, str], bool] | None = None,
    margin: float | None = None,
) -> IncrementalReplies:
    """The greedy replies ``generate_tokens`` would give, found from ``drafts`` (cached reply tokens per
    prompt, e.g. the base model's; an empty draft is plain generation). ``margin``: the relative lead a
    token needs to be accepted (default: by the logits' dtype, ``RELATIVE_MARGIN``)."""
    if len(drafts) != len(encoded):
        raise ValueError("one draft per prompt")
    cut = [list(draft)[:max_new_tokens] for draft in drafts]
    pad = int(loaded.tokenizer.pad_token_id)
    position = {id(item): i for i, item in enumerate(encoded)}
    verified: list[_Verified | None] = [None] * len(encoded)
    with reporter.progress(f"{label}: check", len(encoded)) as progress:
        for batch in batches(list(encoded), batch_size, pad):
            indices = [position[id(item)] for item in batch.items]
            for index, result in zip(
                indices,
                _verify_batch(loaded, batch.items, [cut[i] for i in indices], max_new_tokens, margin, settled),
                strict=True,
            ):
                verified[index] = result
            progress.advance(len(batch.items))
    done = [v for v in verified if v is not None]
    todo = [i for i, v in enumerate(done) if not v.complete]
    tokens = [list(v.prefix) for v in done]
    if todo:
        continued = generate_tokens(
            loaded,
            [replace(encoded[i], ids=encoded[i].ids + tuple(done[i].prefix)) for i in todo],
            max_new_tokens,
            batch_size,
            reporter,
            f"{label}: generate",
            settled=settled,
            prefixes=[done[i].prefix for i in todo],
        )
        for i, rest in zip(todo, continued, strict=True):
            tokens[i] = done[i].prefix + rest
    return IncrementalReplies(
        [decode_reply(loaded.tokenizer, row) for row in tokens],
        tokens,
        sum(v.accepted for v in done),
        len(todo),
    )


def replies_from_drafts(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    drafts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int,
    reporter: Reporter,
    label: str,
    known: Mapping[tuple[str, str], str] | None = None,
    record: Callable[[list[tuple[Prompt, str]]], None] | None = None,
) -> list[str]:
    """``generate_replies`` with drafts: ``known`` replies are kept, the rest found by
    ``incremental_replies`` a few batches at a time, each chunk passed to ``record`` as it is done."""
    replies, todo = split_known(encoded, known)
    chunk = 4 * batch_size  # what a killed run loses at most
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        found = incremental_replies(
            loaded,
            [encoded[i] for i in part],
            [drafts[i] for i in part],
            max_new_tokens,
            batch_size,
            reporter,
            label,
        )
        for i, reply in zip(part, found.replies, strict=True):
            replies[i] = reply
        if record is not None:
            record([(encoded[i].prompt, replies[i]) for i in part])
    return replies
