"""Replies from cached drafts equal plain greedy generation, token for token, on tiny models."""

from __future__ import annotations

import pytest
import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.model.batching import encode_prompts
from sparse_edit.model.generation import generate_tokens
from sparse_edit.model.incremental import incremental_replies
from sparse_edit.model.loading import load_model
from sparse_edit.options import LocateOptions

QUIET = Reporter(quiet=True)
TEXTS = ("hello there", "a b c d e", "why", "how do I", "tell me a story about the sea", "x", "one two", "no")


def loaded_model(tiny_models, family: str, dtype: str):
    options = LocateOptions.model_construct(model=tiny_models(family), device="cpu", dtype=dtype)
    loaded = load_model(options)
    prompts = [Prompt(str(i), "en", text, "harmless") for i, text in enumerate(TEXTS)]
    return loaded, encode_prompts(loaded.tokenizer, prompts)


def perturb(loaded, rows: int, scale: float, seed: int = 0) -> None:
    """An in-place edit of the first layer's MLP input rows, like apply's (a few rows, a real change)."""
    layer = loaded.model.model.layers[0].mlp.gate_proj.weight
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer[:rows] += scale * torch.randn(layer[:rows].shape, generator=generator).to(layer.dtype)


@pytest.mark.parametrize(("family", "dtype"), [("llama", "float32"), ("qwen2", "float32"), ("llama", "bfloat16")])
def test_replies_from_base_drafts_equal_plain_generation_of_the_edited_model(tiny_models, family, dtype):
    loaded, encoded = loaded_model(tiny_models, family, dtype)
    base = generate_tokens(loaded, encoded, 10, 3, QUIET)
    perturb(loaded, rows=8, scale=0.1)
    plain = generate_tokens(loaded, encoded, 10, 3, QUIET)
    assert plain != base, "the edit changes some reply, so the drafts are tested where they diverge"
    fast = incremental_replies(loaded, encoded, base, 10, 3, QUIET)
    assert fast.tokens == plain
    if dtype == "float32":  # both paths ran: tokens taken from the drafts, and rows generated after a divergence
        assert fast.accepted_tokens > 0 and fast.generated_rows > 0
    assert fast.replies == [loaded.tokenizer.decode(row, skip_special_tokens=True).strip() for row in plain]


def test_an_unchanged_model_accepts_its_own_replies_in_one_pass(tiny_models):
    loaded, encoded = loaded_model(tiny_models, "llama", "float32")
    base = generate_tokens(loaded, encoded, 10, 4, QUIET)
    fast = incremental_replies(loaded, encoded, base, 10, 4, QUIET)
    assert fast.tokens == base
    # Near-ties are regenerated on purpose; the rest of the cached tokens are taken as they are.
    assert fast.accepted_tokens > sum(map(len, base)) // 2 and fast.generated_rows < len(encoded)


def test_early_stops_match_an_end_token_and_a_settled_verdict(tiny_models):
    loaded, encoded = loaded_model(tiny_models, "qwen2", "float32")
    base = generate_tokens(loaded, encoded, 12, 3, QUIET)
    perturb(loaded, rows=4, scale=1.0)
    # An end token the edited model emits mid-reply, so some replies stop early after the edit.
    edited_plain = generate_tokens(loaded, encoded, 12, 3, QUIET)
    loaded.model.generation_config.eos_token_id = edited_plain[0][3]
    stopped = generate_tokens(loaded, encoded, 12, 3, QUIET)
    assert any(len(row) < 12 for row in stopped)
    assert incremental_replies(loaded, encoded, base, 12, 3, QUIET).tokens == stopped

    def settled(prompt: Prompt, reply: str) -> bool:
        return len(reply) >= 6 * (1 + int(prompt.id) % 3)

    settled_plain = generate_tokens(loaded, encoded, 12, 3, QUIET, settled=settled)
    assert incremental_replies(loaded, encoded, base, 12, 3, QUIET, settled=settled).tokens == settled_plain


def test_short_or_empty_drafts_are_continued_to_the_limit(tiny_models):
    loaded, encoded = loaded_model(tiny_models, "llama", "float32")
    plain = generate_tokens(loaded, encoded, 9, 4, QUIET)
    short = [row[:4] for row in plain]  # cached with a smaller token limit
    fast = incremental_replies(loaded, encoded, short, 9, 4, QUIET)
    assert fast.tokens == plain
    assert incremental_replies(loaded, encoded, [[] for _ in encoded], 9, 4, QUIET).tokens == plain
    with pytest.raises(ValueError, match="one draft per prompt"):
        incremental_replies(loaded, encoded, plain[:2], 9, 4, QUIET)


def edited_and_eval_args(tmp_path) -> list:
    """A tiny Llama base and its edit in ``tmp_path``, and the eval arguments that compare them (no -o)."""
    from sparse_edit.testing import build_tiny_model
    from tests.helpers import locate_and_apply

    build_tiny_model(tmp_path / "base", "llama")
    locate_and_apply(tmp_path)
    return [
        "eval",
        "--model",
        tmp_path / "edited",
        "--base",
        tmp_path / "base",
        "--harmful",
        tmp_path / "harmful.jsonl",
        "--harmless",
        tmp_path / "harmless.jsonl",
        "--device",
        "cpu",
        "-q",
        "--no-representation",
    ]


def test_eval_with_base_reads_each_models_harmless_log_odds_off_the_kl_passes(tmp_path):
    """The KL passes over the harmless prompts also give both models' harmless log-odds; each must be its
    own model's, equal to a separate pass of that model."""
    import json
    import math

    from sparse_edit.data.prompts import load_sources
    from sparse_edit.measure.probes import mean, refusal_scores
    from sparse_edit.model.batching import encode_prompts
    from sparse_edit.model.loading import load_model
    from sparse_edit.options.model import ModelOptions
    from tests.helpers import run_cli

    args = edited_and_eval_args(tmp_path)
    run_cli(*args, "--max-new-tokens", "4", "-o", tmp_path / "report")
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    harmless, _ = load_sources([str(tmp_path / "harmless.jsonl")], "harmless", "--harmless")
    expected = {}
    for tag, path in (("edited", tmp_path / "edited"), ("base", tmp_path / "base")):
        loaded = load_model(ModelOptions(model=path, device="cpu"))
        encoded = encode_prompts(loaded.tokenizer, harmless, None, None)
        expected[tag] = {
            lang: mean(values) for lang, values in refusal_scores(loaded, encoded, 16, all_positions=True).items()
        }
    assert expected["edited"] != expected["base"], "the edit moves the harmless log-odds"
    for lang, row in report["languages"].items():
        assert math.isclose(row["log_odds_harmless"], expected["edited"][lang], rel_tol=1e-6, abs_tol=1e-6)
        assert math.isclose(row["base"]["log_odds_harmless"], expected["base"][lang], rel_tol=1e-6, abs_tol=1e-6)


def test_eval_with_base_drafts_writes_the_report_plain_generation_writes(tmp_path):
    import json

    from tests.helpers import run_cli

    common = [*edited_and_eval_args(tmp_path), "--max-new-tokens", "8"]
    run_cli(*common, "--reuse-base-replies", "-o", tmp_path / "drafted")
    run_cli(*common, "-o", tmp_path / "plain")
    drafted, plain = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("drafted", "plain"))
    assert drafted["settings"].pop("reuse_base_replies") is True
    assert plain["settings"].pop("reuse_base_replies") is False
    assert drafted == plain
    assert (tmp_path / "drafted" / "replies.jsonl").read_bytes() == (
        tmp_path / "plain" / "replies.jsonl"
    ).read_bytes()
    assert plain["changed"]["newly_refused_harmless"] or plain["summary"]["kl_harmless"] > 0, "the edit acts"


def test_base_cache_keeps_the_base_replies_for_later_evals_of_the_same_base_and_settings(tmp_path):
    import json

    from tests.helpers import run_cli

    cache = tmp_path / "cache"
    common = edited_and_eval_args(tmp_path)

    def report(name: str) -> dict:
        found = json.loads((tmp_path / name / "report.json").read_text())
        for key in ("base_cache", "reuse_base_replies"):
            found["settings"].pop(key)
        return found

    run_cli(*common, "--max-new-tokens", "8", "-o", tmp_path / "plain")
    run_cli(*common, "--max-new-tokens", "8", "--base-cache", cache, "-o", tmp_path / "filling")
    (kept,) = cache.iterdir()
    rows = kept.read_text(encoding="utf-8").splitlines()
    replies = (tmp_path / "plain" / "replies.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + len(replies) // 2, "a header and one row per base reply"
    assert report("filling") == report("plain")

    # A second eval reads the cached replies instead of generating: nothing is appended, the report is the same,
    # and with --reuse-base-replies the cached texts serve as drafts.
    before = kept.read_bytes()
    run_cli(*common, "--max-new-tokens", "8", "--base-cache", cache, "-o", tmp_path / "cached")
    run_cli(
        *common, "--max-new-tokens", "8", "--base-cache", cache, "--reuse-base-replies", "-o", tmp_path / "drafted"
    )
    assert kept.read_bytes() == before
    assert report("cached") == report("plain") == report("drafted")

    # The replies really come from the cache: a cached reply changed by hand is the base reply reported.
    first = json.loads(rows[1])
    rows[1] = json.dumps({**first, "reply": "I'm sorry, but I can't help with that."})
    kept.write_text("\n".join(rows) + "\n", encoding="utf-8")
    run_cli(*common, "--max-new-tokens", "8", "--base-cache", cache, "-o", tmp_path / "tampered")
    base_rows = [
        json.loads(line)
        for line in (tmp_path / "tampered" / "replies.jsonl").read_text(encoding="utf-8").splitlines()
        if json.loads(line)["model"] == "base"
    ]
    assert any(
        row["reply"] == "I'm sorry, but I can't help with that."
        and (row["lang"], row["id"]) == (first["lang"], first["id"])
        for row in base_rows
    )

    # Other generation settings get a file of their own; the first one is left as it was.
    edited_cache = kept.read_bytes()
    run_cli(*common, "--max-new-tokens", "6", "--base-cache", cache, "-o", tmp_path / "shorter")
    assert len(list(cache.iterdir())) == 2 and kept.read_bytes() == edited_cache

    result = run_cli(*common[:3], *common[5:], "--base-cache", cache, "-o", tmp_path / "nobase", code=2)
    assert "--base-cache" in result.output and not (tmp_path / "nobase").exists()
