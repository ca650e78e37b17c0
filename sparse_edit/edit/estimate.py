"""How long ``apply`` will take, said before the long work starts.

The cost is counted in prompt passes (one forward pass of one prompt) and generated replies,
and priced by timing the first batch of anchors on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sparse_edit.console import Reporter
from sparse_edit.model.batching import Encoded, batches
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.loading import LoadedModel

# A backward pass through the later layers costs about twice the forward pass it follows.
BACKWARD_FACTOR = 3.0


@dataclass(frozen=True)
class Work:
    """Prompt passes and generated replies of one apply run."""

    anchor_passes: int  # feature collection (once, plus once per step of a sequential edit)
    probe_passes: int  # dev measurements over every candidate and the base
    generated: int  # dev replies, base and every candidate
    candidates: int
    anchor_replies: int = 0  # harmless anchors the model answers first (--harmless-reply-tokens)
    dev_reply_tokens: int = 0
    anchor_reply_tokens: int = 0
    # The decoder layers the anchor passes run, as a share of the model's: a gather stops after the deepest layer
    # it reads, and a later round replays the layers below the plan's (the trunk).
    anchor_layer_share: float = 1.0

    @property
    def generated_tokens(self) -> int:
        return self.generated * self.dev_reply_tokens + self.anchor_replies * self.anchor_reply_tokens

    def seconds(self, per_pass: float, per_token: float) -> float:
        return (
            self.anchor_passes * self.anchor_layer_share + self.probe_passes
        ) * per_pass + self.generated_tokens * per_token


def count_work(
    anchors: dict[str, Sequence[Encoded]],
    layer_sets: Sequence[tuple[int, ...]],
    strategies: int,
    *,
    attribution: bool,
    ceiling: bool,
    dev_generate: int,
    harmless_reply_tokens: int = 0,
    num_layers: int = 0,
) -> Work:
    """What apply will run: ``anchors`` maps role names (as in ``Anchors``) to prompt lists; with
    ``harmless_reply_tokens`` the harmless training prompts are answered first and then collected again,
    prompt and reply; ``num_layers`` (the model's decoder layers, 0: unknown) prices the anchor passes by
    the layers they run."""
    size = {role: len(items) for role, items in anchors.items()}
    anchor_replies = size["safe_train"] if harmless_reply_tokens else 0
    every_anchor = sum(size.values()) - size.get("safe_replies", 0) + anchor_replies
    candidates = strategies * len(layer_sets)
    sequential_steps = strategies * sum(len(layers) for layers in layer_sets if len(layers) > 1)
    anchor_passes = every_anchor * (int(any(len(ls) == 1 for ls in layer_sets)) + sequential_steps)
    share = _layer_share(layer_sets, strategies, num_layers) if num_layers else 1.0
    if attribution:
        backward = round(BACKWARD_FACTOR * (size["low_train"] + size["ref_train"]))  # every layer
        share = (anchor_passes * share + backward) / (anchor_passes + backward)
        anchor_passes += backward
    harmful_dev, harmless_dev = size["low_dev"], size["safe_dev"]
    per_candidate = harmful_dev + 2 * harmless_dev + (harmful_dev + size["ref_dev"] if ceiling else 0)
    probe_passes = harmful_dev + harmless_dev + candidates * per_candidate if harmful_dev or harmless_dev else 0
    generated = (1 + candidates) * (harmful_dev + harmless_dev) if dev_generate else 0
    return Work(
        anchor_passes,
        probe_passes,
        generated,
        candidates,
        anchor_replies,
        dev_generate,
        harmless_reply_tokens,
        share,
    )


def _layer_share(layer_sets: Sequence[tuple[int, ...]], strategies: int, num_layers: int) -> float:
    """The mean share of decoder layers one round of anchor passes runs (``count_work``'s rounds, in order)."""
    singles = [ls[0] for ls in layer_sets if len(ls) == 1]
    sequential = [layer for _ in range(strategies) for ls in layer_sets if len(ls) > 1 for layer in ls]
    deepest = ([max(singles)] if singles else []) + sequential
    if not deepest:
        return 1.0
    trunk = min(layer for ls in layer_sets for layer in ls) if sequential else 0
    # The first round runs every layer up to the deepest it reads; the later ones start at the trunk.
    layers = [deepest[0] + 1] + [layer + 1 - trunk for layer in deepest[1:]]
    return sum(layers) / len(layers) / num_layers


def time_first_batch(
    loaded: LoadedModel, items: Sequence[Encoded], batch_size: int, new_tokens: int
) -> tuple[float, float]:
    """Seconds per prompt pass and per generated token (``new_tokens`` of them per reply), timed on the
    first batch (the pass: best of two)."""
    batch = next(iter(batches(items[:batch_size], batch_size, int(loaded.tokenizer.pad_token_id))))
    inputs = batch.model_inputs(loaded.input_device)
    times = []
    with torch.inference_mode():
        for _ in range(2):
            start = time.perf_counter()
            loaded.model(**inputs, use_cache=False)
            times.append(time.perf_counter() - start)
    per_pass = min(times) / len(batch.items)
    per_token = 0.0
    if new_tokens:
        start = time.perf_counter()
        generate_replies(loaded, batch.items, new_tokens, batch_size, Reporter(quiet=True), "timing")
        per_token = (time.perf_counter() - start) / len(batch.items) / new_tokens
    return per_pass, per_token


def describe(work: Work, per_pass: float, per_token: float) -> str:
    minutes = work.seconds(per_pass, per_token) / 60
    anchor = f"{work.anchor_passes} anchor passes"
    if work.anchor_layer_share < 1:
        anchor += f" (running {work.anchor_layer_share:.0%} of the layers on average)"
    parts = [anchor, f"{work.probe_passes} dev probe passes"]
    if work.anchor_replies:
        parts.append(
            f"{work.anchor_replies} harmless anchor replies ({per_token * work.anchor_reply_tokens:.2f} s each)"
        )
    if work.generated:
        parts.append(f"{work.generated} dev replies ({per_token * work.dev_reply_tokens:.2f} s each)")
    return (
        f"estimate: {work.candidates} candidate(s); {', '.join(parts)} at {per_pass * 1000:.0f} ms per prompt pass "
        f"(timed on the first batch) ≈ {minutes:.1f} min"
    )
