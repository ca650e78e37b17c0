"""Early-stopped generation and the kept base logits tune's trials measure KL against."""

from __future__ import annotations

import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.measure.probes import KeptLogits, base_logits, token_kl
from sparse_edit.model.batching import encode_prompts
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.loading import load_model
from sparse_edit.options import LocateOptions


def _loaded_and_prompts(tiny_models):
    loaded = load_model(LocateOptions.model_construct(model=tiny_models("qwen2"), device="cpu", dtype="float32"))
    prompts = [
        Prompt(str(i), "en", text, "harmless") for i, text in enumerate(("hello there", "a b c d e", "why"))
    ]
    return loaded, encode_prompts(loaded.tokenizer, prompts)


def test_a_settled_reply_stops_and_the_others_run_to_the_token_limit(tiny_models):
    loaded, encoded = _loaded_and_prompts(tiny_models)
    quiet = Reporter(quiet=True)
    full = generate_replies(loaded, encoded, 12, 8, quiet)
    seen: list[str] = []

    def settled(prompt: Prompt, reply: str) -> bool:
        seen.append(reply)
        return prompt.id == "1" and len(reply) > 0

    stopped = generate_replies(loaded, encoded, 12, 8, quiet, settled=settled)
    assert seen, "the predicate is asked while generating"
    # Greedy: the stopped reply is a prefix of the full one; the rows not settled are unchanged.
    assert stopped[0] == full[0] and stopped[2] == full[2]
    assert full[1].startswith(stopped[1]) and len(stopped[1]) < len(full[1])


def test_kept_logits_run_the_base_pass_once_within_the_budget(tiny_models):
    loaded, encoded = _loaded_and_prompts(tiny_models)
    calls = []

    def counted(inputs):
        calls.append(1)
        return base_logits(loaded)(inputs)

    def no_edit():
        from contextlib import nullcontext

        return nullcontext()

    kept = KeptLogits(counted, budget=1 << 30)
    first = token_kl(loaded, encoded, 2, no_edit, base=kept)
    batches = len(calls)
    second = token_kl(loaded, encoded, 2, no_edit, base=kept)
    assert len(calls) == batches == 2  # two batches of at most 2 prompts, computed once
    assert first == second and abs(first[0]) < 1e-6
    assert first == token_kl(loaded, encoded, 2, no_edit)  # the same numbers as recomputing them

    nothing_kept = KeptLogits(counted, budget=0)
    token_kl(loaded, encoded, 2, no_edit, base=nothing_kept)
    token_kl(loaded, encoded, 2, no_edit, base=nothing_kept)
    assert len(calls) == batches + 4 and not nothing_kept.kept
    assert isinstance(next(iter(kept.kept.values())), torch.Tensor)
