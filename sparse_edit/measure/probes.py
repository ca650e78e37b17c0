"""Dev measurements of an edit: refusal log-odds per prompt, per-token KL between two weight states, and
the judged refusal rate of short greedy replies."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from sparse_edit.console import Reporter
from sparse_edit.data.refusal import opening_token_ids, refusal_log_odds
from sparse_edit.measure.judge import KeywordJudge
from sparse_edit.model.batching import Batch, Encoded, batches, last_logits_kwargs
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.loading import LoadedModel

EditContext = Callable[[], AbstractContextManager[object]]


def _no_edit() -> AbstractContextManager[object]:
    return nullcontext()


def _batches(loaded: LoadedModel, encoded: Sequence[Encoded], batch_size: int) -> Iterator:
    return batches(encoded, batch_size, int(loaded.tokenizer.pad_token_id))


class RefusalScores:
    """Refusal log-odds at the last prompt position, gathered batch by batch, grouped by language."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.openings: dict[str, list[int]] = {}
        self.by_lang: dict[str, list[float]] = {}

    def add(self, batch: Batch, logits: torch.Tensor) -> None:
        langs = [item.prompt.lang for item in batch.items]
        ids = [self.openings.setdefault(lang, opening_token_ids(self.tokenizer, lang)) for lang in langs]
        for lang, value in zip(langs, refusal_log_odds(logits[:, -1].cpu(), ids).tolist(), strict=True):
            self.by_lang.setdefault(lang, []).append(value)


def refusal_scores(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    batch_size: int,
    edit: EditContext = _no_edit,
    before_batch: Callable[[Batch], None] | None = None,
    all_positions: bool = False,
) -> dict[str, list[float]]:
    """Refusal log-odds at the last prompt position, grouped by language.

    Only the last position's logits are computed unless ``all_positions``: scores to be compared with ones
    read off full passes (``kl_between``'s) need it, as the output projection of one row rounds a little
    differently (about 1e-6 in float32) from that of many.
    """
    scores = RefusalScores(loaded.tokenizer)
    keep = {} if all_positions else last_logits_kwargs(loaded.model, 1)
    with edit(), torch.inference_mode():
        for batch in _batches(loaded, encoded, batch_size):
            if before_batch is not None:
                before_batch(batch)
            scores.add(
                batch, loaded.model(**batch.model_inputs(loaded.input_device), use_cache=False, **keep).logits
            )
    return scores.by_lang


def refusal_rates(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    max_new_tokens: int,
    batch_size: int,
    reporter: Reporter,
    edit: EditContext = _no_edit,
) -> dict[str, float]:
    """Share of greedy replies the keyword judge calls a refusal, per language."""
    with edit():
        replies = generate_replies(loaded, encoded, max_new_tokens, batch_size, reporter, "dev replies")
    judge = KeywordJudge()
    refused: dict[str, list[float]] = {}
    for item, reply in zip(encoded, replies, strict=True):
        verdict = judge.judge(item.prompt.text, item.prompt.lang, reply)
        refused.setdefault(item.prompt.lang, []).append(float(verdict.label == "refusal"))
    return {lang: mean(values) for lang, values in refused.items()}


def rate_gains(after: dict[str, float], base: dict[str, float]) -> tuple[float, dict[str, float]]:
    """(mean over languages, per language) of ``after - base`` refusal rates."""
    by_lang = {lang: rate - base[lang] for lang, rate in after.items()}
    return (mean(list(by_lang.values())) if by_lang else 0.0), by_lang


def token_kl(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    batch_size: int,
    edit: EditContext,
    scores: RefusalScores | None = None,
    base: Logits | None = None,
) -> tuple[float, float]:
    """Mean per-token KL(base ‖ edited) in nats and the change of mean token NLL, over non-pad positions.

    With ``scores``, the edited model's refusal log-odds are read off the same forward passes; ``base``
    replaces the base model's pass (a ``KeptLogits`` of it).
    """

    def edited_logits(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with edit():
            return loaded.model(**inputs, use_cache=False).logits

    return kl_between(
        loaded,
        base or base_logits(loaded),
        edited_logits,
        encoded,
        batch_size,
        scores.add if scores is not None else None,
    )


Logits = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def base_logits(loaded: LoadedModel) -> Logits:
    return lambda inputs: loaded.model(**inputs, use_cache=False).logits


class KeptLogits:
    """A model's logits per batch, computed once and kept (up to ``budget`` bytes) for later calls on the
    same inputs: repeated KL measurements against one base model then run only the edited pass."""

    def __init__(self, logits: Logits, budget: int) -> None:
        self.logits = logits
        self.budget = budget
        self.kept: dict[bytes, torch.Tensor] = {}
        self.size = 0

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = inputs["input_ids"]
        key = bytes(str(tuple(ids.shape)), "ascii") + ids.cpu().numpy().tobytes()
        if key in self.kept:
            return self.kept[key]
        value = self.logits(inputs)
        size = value.numel() * value.element_size()
        if self.size + size <= self.budget:
            self.kept[key] = value
            self.size += size
        return value


def kl_between(
    loaded: LoadedModel,
    base: Logits,
    edited: Logits,
    encoded: Sequence[Encoded],
    batch_size: int,
    on_edited: Callable[[Batch, torch.Tensor], None] | None = None,
    on_base: Callable[[Batch, torch.Tensor], None] | None = None,
) -> tuple[float, float]:
    """Mean per-token KL(base ‖ edited) and the change of mean next-token NLL (edited − base).

    ``on_edited`` and ``on_base`` see every batch's logits of each model (to measure more from the same passes).
    """
    total_kl, total_tokens, nll_base, nll_edit, predicted = 0.0, 0, 0.0, 0.0, 0
    with torch.inference_mode():
        for batch in _batches(loaded, encoded, batch_size):
            inputs = batch.model_inputs(loaded.input_device)
            logits_base = base(inputs)
            if on_base is not None:
                on_base(batch, logits_base)
            p = torch.log_softmax(logits_base.float(), -1)
            edited_logits = edited(inputs)
            if on_edited is not None:
                on_edited(batch, edited_logits)
            q = torch.log_softmax(edited_logits.float().to(p.device), -1)
            mask = inputs["attention_mask"].bool()
            kl = (p.exp() * (p - q)).sum(-1)
            total_kl += float(kl[mask].sum())
            total_tokens += int(mask.sum())
            targets = inputs["input_ids"][:, 1:].unsqueeze(-1)
            next_mask = mask[:, 1:] & mask[:, :-1]
            predicted += int(next_mask.sum())
            nll_base -= float(p[:, :-1].gather(-1, targets).squeeze(-1)[next_mask].sum())
            nll_edit -= float(q[:, :-1].gather(-1, targets).squeeze(-1)[next_mask].sum())
    return total_kl / max(total_tokens, 1), (nll_edit - nll_base) / max(predicted, 1)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
