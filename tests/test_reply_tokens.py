"""--harmless-reply-tokens: the model's own replies to harmless prompts counted among the harmless tokens."""

from __future__ import annotations

import json

import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.model.batching import Encoded, encode_prompts
from sparse_edit.model.features import FeatureRequest, collect
from sparse_edit.model.loading import load_model
from sparse_edit.options import LocateOptions
from tests.helpers import apply_args, run_cli


def test_a_counted_tail_counts_only_the_reply_and_adds_up_to_the_whole_sequence(tiny_models):
    loaded = load_model(LocateOptions.model_construct(model=tiny_models("qwen2"), device="cpu", dtype="float32"))
    prompts = [Prompt(str(i), "en", text, "harmless") for i, text in enumerate(("hello there", "a b c d e f"))]
    encoded = encode_prompts(loaded.tokenizer, prompts)
    reply = (5, 9, 11)
    whole = [Encoded(item.prompt, item.ids + reply, False) for item in encoded]
    tails = [Encoded(item.prompt, item.ids + reply, False, counted_tail=len(reply)) for item in encoded]
    request = FeatureRequest([1], ["mlp_input"], gram=True, tail_rows=True, moment_sites=["neurons"])
    quiet = Reporter(quiet=True)
    # One prompt per batch: no padding, so a prompt's tokens see exactly what they see alone (causal model).
    prompt_part, reply_part, full = (
        collect(loaded, items, request, 1, quiet, "t") for items in (encoded, tails, whole)
    )
    assert reply_part.tokens == len(reply) * len(prompts)
    assert prompt_part.tokens + reply_part.tokens == full.tokens
    both = prompt_part.with_tokens_of(reply_part)
    key = ("mlp_input", 1)

    def close(got: torch.Tensor, wanted: torch.Tensor) -> None:
        # float32 forward passes of different lengths differ in the last bits
        torch.testing.assert_close(got, wanted, rtol=1e-4, atol=1e-5 * float(wanted.abs().max()))

    close(both.grams[key], full.grams[key])
    close(both.sums[("neurons", 1)], full.sums[("neurons", 1)])
    close(both.squares[("neurons", 1)], full.squares[("neurons", 1)])
    torch.testing.assert_close(both.rows[key], prompt_part.rows[key])  # rows stay the prompts' last tokens
    assert not torch.allclose(reply_part.rows[key], prompt_part.rows[key])  # (the reply's end is elsewhere)


def test_apply_with_reply_tokens_changes_the_edit_records_the_replies_and_verifies(located, tmp_path):
    model, artifact = located("llama")

    def manifest(out: str, *extra: str) -> dict:
        return json.loads(
            run_cli(*apply_args(artifact, tmp_path / out, "--strategy", "paper", *extra), "--json").stdout
        )

    plain, with_replies = manifest("plain"), manifest("replies", "--harmless-reply-tokens", "6")
    assert "safe_replies" not in plain["anchors"]  # manifests without the option are as before
    assert 0 < with_replies["anchors"]["safe_replies"] <= with_replies["anchors"]["safe_train"]
    assert with_replies["settings"]["harmless_reply_tokens"] == 6
    assert with_replies["diagnostics"]["leak_train"] != plain["diagnostics"]["leak_train"]
    report = json.loads(run_cli("verify", model, tmp_path / "replies", "--json").stdout)
    assert report["ok"], report


def test_a_study_with_reply_tokens_keeps_them_in_chosen_toml_and_apply_reproduces_it(located, tmp_path):
    from tests.test_tune import tree_hashes, tune_args

    _, artifact = located("llama")
    study = tmp_path / "study"
    flags = ("--strategy", "detector,paper", "--harmless-reply-tokens", "5", "--apply")
    run_cli(*tune_args(artifact, study, *flags, trials=2))
    assert "harmless_reply_tokens = 5" in (study / "chosen.toml").read_text()
    again = tmp_path / "again"
    run_cli("apply", "--config", study / "chosen.toml", "-o", again, "-q")
    assert tree_hashes(again) == tree_hashes(study / "edited")
