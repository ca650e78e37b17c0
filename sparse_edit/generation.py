"""Batched greedy generation with the model's chat template (identical settings for every model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparse_edit.console import Reporter
from sparse_edit.modeling import Encoded, LoadedModel, batch_memory_guard, batches


def generate_replies(
    loaded: LoadedModel,
    encoded: Sequence[Encoded],
    max_new_tokens: int,
    batch_size: int,
    reporter: Reporter,
    label: str = "generate",
) -> list[str]:
    """Greedy replies, in the order of ``encoded``; special tokens and the prompt are removed."""
    tokenizer = loaded.tokenizer
    pad = int(tokenizer.pad_token_id)
    position = {id(item): i for i, item in enumerate(encoded)}
    replies = [""] * len(encoded)
    with reporter.progress(label, len(encoded)) as progress:
        for batch in batches(encoded, batch_size, pad):
            inputs = batch.model_inputs(loaded.input_device)
            inputs.pop("position_ids")  # generate derives positions from the attention mask
            with batch_memory_guard(batch_size), torch.inference_mode():
                output = loaded.model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu()
            for item, row in zip(batch.items, new_tokens, strict=True):
                replies[position[id(item)]] = tokenizer.decode(row, skip_special_tokens=True).strip()
            progress.advance(len(batch.items))
    return replies
