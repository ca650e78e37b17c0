"""Agreement of greedy replies with themselves and with incremental replies, after bench_incremental.py
(which writes the edited folders), on the first 60 of its anchor-side prompts, 24-token settled replies:

    python benchmarks/incremental_agreement.py bfloat16 linear   # plain at batch 16, 8 and 5; margins
    python benchmarks/incremental_agreement.py float32 linear
    python benchmarks/incremental_agreement.py float32 gated

Prints, per line: replies identical between plain generation at batch 16 and at 8 and 5, replies the
edit changed, then for each margin (None: the dtype's default) the incremental replies identical to
plain at batch 16, the accepted tokens, the rows generated and the seconds (plain at batch 16 first).
"""

from __future__ import annotations

import sys
import time

from bench_incremental import LOCATE, MODEL, RUNS, TIMED

from sparse_edit.api import eval_options, locate_options
from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.data.selection import prepare_prompts
from sparse_edit.measure.judge import KeywordJudge
from sparse_edit.model.batching import encode_prompts
from sparse_edit.model.generation import generate_tokens
from sparse_edit.model.incremental import incremental_replies
from sparse_edit.model.loading import load_model

TOKENS, BATCH, PROMPTS = 24, 16, 60


def same(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def main(dtype: str, edit: str) -> None:
    quiet, judge = Reporter(quiet=True), KeywordJudge()

    def settled(prompt: Prompt, reply: str) -> bool:
        return judge.settled(prompt.lang, reply)

    base = load_model(locate_options(model=MODEL, dtype=dtype, device="cpu", **LOCATE))
    options = eval_options(model=RUNS / edit, output=RUNS / "unused", dtype=dtype, device="cpu", **TIMED)
    sets = prepare_prompts(options, quiet, both_classes=False)
    edited = load_model(options)
    items = encode_prompts(edited.tokenizer, [*sets.harmful, *sets.harmless])[:PROMPTS]
    drafts = generate_tokens(base, items, TOKENS, BATCH, quiet, settled=settled)
    start = time.perf_counter()
    plain = generate_tokens(edited, items, TOKENS, BATCH, quiet, settled=settled)
    plain_seconds = time.perf_counter() - start
    by_batch = {size: generate_tokens(edited, items, TOKENS, size, quiet, settled=settled) for size in (8, 5)}
    print(
        f"{dtype} {edit}: plain batch 16 = batch 8 on {same(plain, by_batch[8])}/{len(items)}, "
        f"= batch 5 on {same(plain, by_batch[5])}; the edit changed {len(items) - same(plain, drafts)}; "
        f"plain {plain_seconds:.1f} s"
    )
    for margin in (None, 0.0, 1e-3, 1e-2, 3e-2):
        start = time.perf_counter()
        found = incremental_replies(edited, items, drafts, TOKENS, BATCH, quiet, settled=settled, margin=margin)
        seconds = time.perf_counter() - start
        print(
            f"  margin {margin}: = plain on {same(plain, found.tokens)}/{len(items)}, "
            f"{found.accepted_tokens} tokens accepted, {found.generated_rows} rows generated, {seconds:.1f} s"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
