"""Batched greedy generation with the model's chat template (identical settings for every model)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.model.batching import Encoded, batch_memory_guard, batches
from sparse_edit.model.loading import LoadedModel


def eos_ids(loaded: LoadedModel) -> set[int]:
    """The tokens greedy generation stops at (the generation config's end tokens)."""
    value = loaded.model.generation_config.eos_token_id
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}


def decode_reply(tokenizer: Any, tokens: Sequence[int]) -> str:
    return str(tokenizer.decode(list(tokens), skip_special_tokens=True)).strip()


class RowStops(StoppingCriteria):
    """Ends each row of a batch at its own token budget, or once ``settled`` says its reply so far cannot
    change verdict; records the length at which each row ended."""

    def __init__(
        self,
        tokenizer: Any,
        prompts: Sequence[Prompt],
        prompt_length: int,
        budgets: Sequence[int],
        prefixes: Sequence[Sequence[int]],
        settled: Callable[[Prompt, str], bool] | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.prompt_length = prompt_length
        self.budgets = list(budgets)
        self.prefixes = [list(prefix) for prefix in prefixes]  # reply tokens already in the input
        self.settled = settled
        self.lengths: list[int | None] = [None] * len(self.prompts)  # an ended row stays ended

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :]
        for i, row in enumerate(new):
            if self.lengths[i] is not None:
                continue
            if new.shape[1] >= self.budgets[i] or (
                self.settled is not None
                and self.settled(self.prompts[i], decode_reply(self.tokenizer, self.prefixes[i] + row.tolist()))
            ):
                self.lengths[i] = new.shape[1]
        done = [length is not None for length in self.lengths]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _trim(row: list[int], stop_ids: set[int], length: int | None) -> list[int]:
    """The tokens a row generated: up to its first end token, or the length its stop recorded."""
    end = next((i + 1 for i, token in enumerate(row) if token in stop_ids), len(row))
    return row[: min(end, length if length is not None else len(row))]


def generate_tokens(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    max_new_tokens: int,
    batch_size: int,
    reporter: Reporter,
    label: str = "generate",
    settled: Callable[[Prompt, str], bool] | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
    on_batch: Callable[[list[int], list[list[int]]], None] | None = None,
) -> list[list[int]]:
    """Greedy reply tokens, in the order of ``encoded``, without padding (an end token kept).

    ``prefixes[i]``: reply tokens already at the end of ``encoded[i]`` (they count toward
    ``max_new_tokens`` and toward the text ``settled`` reads; they are not returned).
    ``settled(prompt, reply so far)`` ends a reply early (a judge's verdict that no continuation changes);
    a batch stops once each of its replies has ended. ``on_batch(indices, tokens)`` sees each batch.
    """
    tokenizer = loaded.tokenizer
    pad = int(tokenizer.pad_token_id)
    stop_ids = eos_ids(loaded)
    prefixes = prefixes if prefixes is not None else [()] * len(encoded)
    position = {id(item): i for i, item in enumerate(encoded)}
    out: list[list[int]] = [[] for _ in encoded]
    with reporter.progress(label, len(encoded)) as progress:
        for batch in batches(encoded, batch_size, pad):
            indices = [position[id(item)] for item in batch.items]
            budgets = [max_new_tokens - len(prefixes[i]) for i in indices]
            inputs = batch.model_inputs(loaded.input_device)
            inputs.pop("position_ids")  # generate derives positions from the attention mask
            width = inputs["input_ids"].shape[1]
            stops = RowStops(
                tokenizer,
                [item.prompt for item in batch.items],
                width,
                budgets,
                [prefixes[i] for i in indices],
                settled,
            )
            with batch_memory_guard(batch_size), torch.inference_mode():
                output = loaded.model.generate(
                    **inputs,
                    stopping_criteria=StoppingCriteriaList([stops]),
                    max_new_tokens=max(budgets),
                    do_sample=False,
                    pad_token_id=pad,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            rows = [
                _trim(row.tolist(), stop_ids, length)
                for row, length in zip(output[:, width:].cpu(), stops.lengths, strict=True)
            ]
            for i, row in zip(indices, rows, strict=True):
                out[i] = row
            if on_batch is not None:
                on_batch(indices, rows)
            progress.advance(len(batch.items))
    return out


def split_known(
    encoded: Sequence[Encoded], known: Mapping[tuple[str, str], str] | None
) -> tuple[list[str], list[int]]:
    """(the replies so far: ``known`` ones by (lang, id), "" for the rest; the indices still to run)."""
    known = known or {}
    replies = [known.get((item.prompt.lang, item.prompt.id), "") for item in encoded]
    todo = [i for i, item in enumerate(encoded) if (item.prompt.lang, item.prompt.id) not in known]
    return replies, todo


def generate_replies(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    max_new_tokens: int,
    batch_size: int,
    reporter: Reporter,
    label: str = "generate",
    known: Mapping[tuple[str, str], str] | None = None,
    record: Callable[[list[tuple[Prompt, str]]], None] | None = None,
    settled: Callable[[Prompt, str], bool] | None = None,
    tokens_out: list[list[int]] | None = None,
) -> list[str]:
    """Greedy replies, in the order of ``encoded``; special tokens and the prompt are removed.

    ``known`` holds replies generated earlier, by (lang, id): those prompts are not run again.
    ``record`` receives each batch's new (prompt, reply) rows as soon as they exist.
    ``settled``: as in ``generate_tokens``. ``tokens_out``, when given, is filled with each reply's
    tokens (empty for a ``known`` reply).
    """
    replies, todo = split_known(encoded, known)
    if tokens_out is not None:
        tokens_out[:] = [[] for _ in encoded]

    def keep(indices: list[int], rows: list[list[int]]) -> None:
        done = []
        for index, row in zip(indices, rows, strict=True):
            replies[todo[index]] = decode_reply(loaded.tokenizer, row)
            if tokens_out is not None:
                tokens_out[todo[index]] = row
            done.append((encoded[todo[index]].prompt, replies[todo[index]]))
        if record is not None:
            record(done)

    if todo:
        generate_tokens(
            loaded, [encoded[i] for i in todo], max_new_tokens, batch_size, reporter, label, settled, on_batch=keep
        )
    return replies
