"""The unedited decoder layers below an edit, computed once per input and replayed.

An edit at layer ``d`` or above leaves the first ``d`` decoder layers computing exactly what they
compute in the base model. A study measures many edits on the same dev inputs, so those layers'
output for each input (one batch of token ids and its mask) is kept the first time it is computed and
returned as it was on every later pass: the same tensor, so the rest of the pass is bit for bit the
pass without the cache. Only passes without a KV cache (``use_cache=False``: teacher-forced replies,
refusal log-odds, KL, feature gathers) take part; generation runs every layer, as its later steps need
each layer's keys and values. While a trunk replays, the hidden states of its layers are not computed:
a reader of a layer's activations must read at or above the trunk's depth.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from sparse_edit.model.layer_patch import Forward, patched_forwards
from sparse_edit.model.loading import LoadedModel

# Trunk outputs kept at once (float32 hidden states of Qwen2.5-0.5B: about 0.35 MB per 100 tokens).
DEFAULT_BUDGET = 1 << 30


@dataclass
class TrunkStats:
    hits: int = 0  # passes that replayed the trunk
    misses: int = 0  # eligible passes that computed it
    bypassed: int = 0  # passes that could not use it (a KV cache, no token ids)


class TrunkCache:
    """Per-input outputs of the first ``depth`` decoder layers of ``loaded``'s model, for passes run inside
    ``replaying(edited_layers)``; ``budget``: bytes of hidden states kept (beyond it: computed every time)."""

    def __init__(self, loaded: LoadedModel, depth: int, budget: int = DEFAULT_BUDGET) -> None:
        if not 0 <= depth <= loaded.num_layers:
            raise ValueError(f"trunk depth {depth} outside 0..{loaded.num_layers}")
        self.loaded = loaded
        self.depth = depth
        self.budget = budget
        self.kept: dict[bytes, Any] = {}
        self.size = 0
        self.stats = TrunkStats()

    def covers(self, edited_layers: Sequence[int]) -> bool:
        """Whether an edit of ``edited_layers`` leaves the trunk unchanged (every edited layer at or above it)."""
        return all(layer >= self.depth for layer in edited_layers)

    @contextmanager
    def replaying(self, edited_layers: Sequence[int]) -> Iterator[None]:
        """Passes of the model inside replay the trunk for inputs seen before (and keep it for new ones).
        ``edited_layers``: the layers the weights in effect differ from the base model's at."""
        if not self.covers(edited_layers):
            raise ValueError(
                f"an edit at layer {min(edited_layers)} lies inside the trunk's first {self.depth} layers"
            )
        if self.depth == 0:
            yield
            return
        # The decoder stack itself, so that passes through the LM head and gathers that call the stack
        # directly both take part; a positional argument is named by the stack's signature.
        stack = self.loaded.model.base_model
        names = list(inspect.signature(stack.forward).parameters)
        current: list[bytes | None] = [None]
        replay: list[Any] = [None]

        def note_input(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            named = {**dict(zip(names, args, strict=False)), **kwargs}  # fewer args than parameters
            ids, mask = named.get("input_ids"), named.get("attention_mask")
            if named.get("use_cache") is not False or ids is None or mask is None:
                current[0], replay[0] = None, None
                self.stats.bypassed += 1
                return
            key = _input_key(ids, mask, named.get("position_ids"))
            current[0], replay[0] = key, self.kept.get(key)
            if replay[0] is None:
                self.stats.misses += 1
            else:
                self.stats.hits += 1

        def layer_forward(index: int, original: Forward) -> Forward:
            def forward(*args: Any, **kwargs: Any) -> Any:
                if replay[0] is not None:  # every trunk layer hands on the kept output of the last one
                    return _copy(replay[0]) if index == self.depth - 1 else replay[0]
                out = original(*args, **kwargs)
                if index == self.depth - 1 and current[0] is not None:
                    self._keep(current[0], _copy(out))
                return out

            return forward

        handle = stack.register_forward_pre_hook(note_input, with_kwargs=True)
        try:
            with patched_forwards(self.loaded.family.layers(self.loaded.model), range(self.depth), layer_forward):
                yield
        finally:
            handle.remove()

    def _keep(self, key: bytes, out: Any) -> None:
        tensors = [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]
        size = sum(t.numel() * t.element_size() for t in tensors)
        if self.size + size <= self.budget:
            self.kept[key] = out
            self.size += size


def _copy(out: Any) -> Any:
    """A layer's output as the next layer gets it, safe from a layer that writes its input in place."""
    return out.clone() if isinstance(out, torch.Tensor) else out


def _input_key(ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor | None) -> bytes:
    parts = [str(tuple(ids.shape)).encode(), ids.cpu().numpy().tobytes(), mask.cpu().numpy().tobytes()]
    if positions is not None:
        parts.append(positions.cpu().numpy().tobytes())
    return b"|".join(parts)
