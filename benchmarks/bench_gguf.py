"""GGUF out on a real quantized model: Qwen2.5-Coder-0.5B-Instruct's GGUF file -> a patched GGUF file.

Measured in one run: apply to a patched .gguf and to a safetensors folder (same artifact, same
settings), each in a child process (time, peak RSS); file sizes; verify of the patched GGUF; and
how far the patched GGUF is from the patched safetensors model: logits on the demo prompts, and the
keyword judge's refusal rates of greedy replies on the same prompts (harmful and harmless).

Model: zoo:qwen2.5-coder-0.5b-instruct (its GGUF file from PyPI). Prompts: examples/prompts/safety-eval.jsonl.
Run: python benchmarks/bench_gguf.py  (writes benchmarks/results/gguf.json)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from runner import ROOT, save

import sparse_edit as se

MODEL = "zoo:qwen2.5-coder-0.5b-instruct"
PROMPTS = str(ROOT / "examples" / "prompts" / "safety-eval.jsonl")
RUNS = ROOT / "runs" / "gguf"
EDIT = {"strategy": ["output"], "layer": "16,18", "max_edit_neurons": 256, "device": "cpu"}


def sidecar(patched: Path) -> Path:
    """The folder beside a patched GGUF file that holds its manifest and delta (docs/formats.md)."""
    return patched.with_name(patched.name + ".sparse_edit")


def timed_child(**settings: Any) -> dict[str, float]:
    """``se.apply_edit(**settings)`` in a child process: wall seconds and peak RSS (MB) of that process."""
    code = (
        "import json, resource, sys, time\n"
        "import sparse_edit as se\n"
        "start = time.perf_counter()\n"
        "se.apply_edit(**json.loads(sys.argv[1]))\n"
        "print('RESULT', time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True, cwd=ROOT
    )
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    _, seconds, peak = next(line for line in result.stdout.splitlines() if line.startswith("RESULT")).split()
    return {"seconds": float(seconds), "peak_rss_mb": float(peak)}


def refusal_rates(model: str, name: str) -> dict[str, float]:
    report = se.evaluate(
        model=model,
        harmful=[PROMPTS],
        harmless=[PROMPTS],
        limit=4,
        max_new_tokens=32,
        representation=False,
        device="cpu",
        output=RUNS / f"report-{name}",
        overwrite=True,
    )
    rows = report.languages.values()
    return {
        "harmful_refusal": sum(r.harmful.refusal.k for r in rows) / sum(r.harmful.n for r in rows),
        "harmless_refusal": sum(r.harmless.refusal.k for r in rows) / sum(r.harmless.n for r in rows),
    }


def main(argv: list[str] | None = None) -> None:
    shutil.rmtree(RUNS, ignore_errors=True)
    RUNS.mkdir(parents=True)
    source = se.gguf_file(MODEL)
    artifact = RUNS / "locate.safetensors"
    se.locate(model=MODEL, harmful=[PROMPTS], harmless=[PROMPTS], device="cpu", output=artifact)
    patched, folder = RUNS / "patched.gguf", RUNS / "patched-safetensors"
    gguf_run = timed_child(artifact=str(artifact), model=str(source), output=str(patched), **EDIT)
    folder_run = timed_child(artifact=str(artifact), output=str(folder), **EDIT)
    start = time.perf_counter()
    report = se.verify(source, patched)
    verify_seconds = time.perf_counter() - start

    from transformers import AutoModelForCausalLM, AutoTokenizer

    as_gguf = AutoModelForCausalLM.from_pretrained(patched.parent, gguf_file=patched.name, dtype=torch.float32)
    as_folder = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = [json.loads(line)["text"] for line in Path(PROMPTS).read_text(encoding="utf-8").splitlines()][::8]
    worst, kl = 0.0, 0.0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            a, b = as_gguf(ids).logits.float(), as_folder(ids).logits.float()
            worst = max(worst, float((a - b).abs().max()))
            p, q = torch.log_softmax(b, -1), torch.log_softmax(a, -1)
            kl = max(kl, float((p.exp() * (p - q)).sum(-1).mean()))
    del as_gguf, as_folder
    types = json.loads((sidecar(patched) / "sparse_edit" / "manifest.json").read_text())["edits"]
    result = {
        "model": MODEL,
        "edit": EDIT,
        "source_gguf_mb": source.stat().st_size / 2**20,
        "patched_gguf_mb": patched.stat().st_size / 2**20,
        "sidecar_mb": sum(p.stat().st_size for p in sidecar(patched).rglob("*") if p.is_file()) / 2**20,
        "edited_tensors": [edit["tensor"] for edit in types],
        "apply_to_gguf": gguf_run,
        "apply_to_safetensors": folder_run,
        "verify_ok": report.ok,
        "verify_checks": [f"{c.name}: {c.detail}" for c in report.checks],
        "verify_seconds": verify_seconds,
        "logits_max_abs_difference_gguf_vs_safetensors": worst,
        "kl_gguf_vs_safetensors_max_per_prompt": kl,
        "refusal_rates_patched_gguf": refusal_rates(str(patched), "gguf"),
        "refusal_rates_patched_safetensors": refusal_rates(str(folder), "safetensors"),
    }
    save("gguf", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
