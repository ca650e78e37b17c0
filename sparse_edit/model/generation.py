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


class SettledReplies(StoppingCriteria):
    """Ends each row of a batch once ``settled`` says its reply so far cannot change verdict."""

    def __init__(
        self, tokenizer: Any, prompts: Sequence[Prompt], prompt_length: int, settled: Callable[[Prompt, str], bool]
    ) -> None:
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.prompt_length = prompt_length
        self.settled = settled
        self.done = [False] * len(self.prompts)  # a settled row stays settled: it is not decoded again

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length :]
        for i, (prompt, row) in enumerate(zip(self.prompts, new, strict=True)):
            if not self.done[i]:
                self.done[i] = self.settled(prompt, self.tokenizer.decode(row, skip_special_tokens=True))
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


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
) -> list[str]:
    """Greedy replies, in the order of ``encoded``; special tokens and the prompt are removed.

    ``known`` holds replies generated earlier, by (lang, id): those prompts are not run again.
    ``record`` receives each batch's new (prompt, reply) rows as soon as they exist.
    ``settled(prompt, reply so far)`` ends a reply early (a judge's verdict that no continuation changes);
    a batch stops once each of its replies has ended.
    """
    tokenizer = loaded.tokenizer
    pad = int(tokenizer.pad_token_id)
    position = {id(item): i for i, item in enumerate(encoded)}
    replies = [""] * len(encoded)
    known = known or {}
    todo = [item for item in encoded if (item.prompt.lang, item.prompt.id) not in known]
    for item in encoded:
        if (item.prompt.lang, item.prompt.id) in known:
            replies[position[id(item)]] = known[(item.prompt.lang, item.prompt.id)]
    with reporter.progress(label, len(encoded)) as progress:
        progress.advance(len(encoded) - len(todo))
        for batch in batches(todo, batch_size, pad):
            inputs = batch.model_inputs(loaded.input_device)
            inputs.pop("position_ids")  # generate derives positions from the attention mask
            stopping = None
            if settled is not None:
                stopping = StoppingCriteriaList(
                    [
                        SettledReplies(
                            tokenizer, [item.prompt for item in batch.items], inputs["input_ids"].shape[1], settled
                        )
                    ]
                )
            with batch_memory_guard(batch_size), torch.inference_mode():
                output = loaded.model.generate(
                    **inputs,
                    stopping_criteria=stopping,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu()
            rows = []
            for item, row in zip(batch.items, new_tokens, strict=True):
                reply = tokenizer.decode(row, skip_special_tokens=True).strip()
                replies[position[id(item)]] = reply
                rows.append((item.prompt, reply))
            if record is not None:
                record(rows)
            progress.advance(len(batch.items))
    return replies
