"""Prompts as the model sees them: chat-template formatting, token ids, and left-padded, length-sorted batches."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from sparse_edit.data.prompts import Prompt
from sparse_edit.errors import SparseEditError

# Used when a tokenizer has no chat template (base models). Documented in the README.
PLAIN_TEMPLATE = "User: {text}\nAssistant:"


# Without --max-length, a formatted prompt longer than this is refused rather than run: the
# attention of one such prompt can need more memory than the machine has.
MAX_PROMPT_TOKENS = 8192


def format_prompt(tokenizer: Any, text: str, system_prompt: str | None = None) -> tuple[str, bool]:
    """The prompt as the model sees it before its answer; returns (text, whether a template was used)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
        messages.append({"role": "user", "content": text})
        # enable_thinking is read by templates with a thinking mode and ignored by the rest.
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return str(rendered), True
    prefix = "" if system_prompt is None else system_prompt + "\n"
    return prefix + PLAIN_TEMPLATE.format(text=text), False


@dataclass(frozen=True)
class Encoded:
    prompt: Prompt
    ids: tuple[int, ...]
    truncated: bool
    # Token statistics (Grams, moments) count only the last this many tokens: a prompt followed by the
    # model's reply, where the prompt's tokens are counted elsewhere. None: every token.
    counted_tail: int | None = None


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], system_prompt: str | None = None, max_length: int | None = None
) -> list[Encoded]:
    encoded = []
    for prompt in prompts:
        text, templated = format_prompt(tokenizer, prompt.text, system_prompt)
        ids = list(tokenizer(text, add_special_tokens=not templated)["input_ids"])
        if max_length is None and len(ids) > MAX_PROMPT_TOKENS:
            raise SparseEditError(
                f"prompt {prompt.id} ({prompt.lang}) is {len(ids)} tokens long, over {MAX_PROMPT_TOKENS}; "
                "pass --max-length N to keep its last N tokens, or shorten it"
            )
        truncated = max_length is not None and len(ids) > max_length
        if max_length is not None and truncated:
            ids = ids[-max_length:]
        encoded.append(Encoded(prompt, tuple(ids), truncated))
    return encoded


@dataclass
class Batch:
    items: list[Encoded]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
            "position_ids": self.position_ids.to(device),
        }


def make_batch(items: list[Encoded], pad_id: int) -> Batch:
    width = max(len(item.ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, width - len(item.ids) :] = torch.tensor(item.ids, dtype=torch.long)
        mask[row, width - len(item.ids) :] = 1
    # Positions count real tokens only, so left padding does not shift them.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(items, input_ids, mask, position_ids)


def batches(encoded: Sequence[Encoded], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Length-sorted batches (less padding); order inside the run is deterministic."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].ids), i))
    for start in range(0, len(order), batch_size):
        yield make_batch([encoded[i] for i in order[start : start + batch_size]], pad_id)


@contextmanager
def batch_memory_guard(batch_size: int) -> Iterator[None]:
    """Turn an out-of-memory error of one batch into a user error that suggests a smaller batch."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise SparseEditError(
            f"ran out of memory at --batch-size {batch_size}; try --batch-size {max(1, batch_size // 2)}"
        ) from exc


def last_logits_kwargs(model: torch.nn.Module, keep: int) -> dict[str, int]:
    """Forward arguments that compute only the last ``keep`` positions' logits where the model can (saves the
    output projection of every other position, and a [batch, length, vocab] tensor)."""
    parameters = inspect.signature(model.forward).parameters
    return {"logits_to_keep": keep} if "logits_to_keep" in parameters else {}
