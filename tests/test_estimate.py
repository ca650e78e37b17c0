"""The up-front cost estimate of apply: what it counts, and that apply prints it before the work."""

from __future__ import annotations

import pytest

from sparse_edit.edit.estimate import Work, count_work, describe
from tests.helpers import apply_args, run_cli

ANCHORS = {
    "low_train": [None] * 40,
    "ref_train": [None] * 20,
    "safe_train": [None] * 60,
    "ref_safe_train": [None] * 20,
    "low_dev": [None] * 8,
    "ref_dev": [None] * 4,
    "safe_dev": [None] * 12,
}


def test_single_layers_share_one_anchor_pass_and_probes_scale_with_candidates():
    work = count_work(ANCHORS, [(4,), (6,), (8,)], 2, attribution=False, ceiling=False, dev_generate=0)
    # Every anchor once (the reference harmless prompts have a pass of their own).
    assert work.anchor_passes == 40 + 20 + 60 + 20 + 8 + 4 + 12
    assert work.candidates == 6
    # Base: harmful + harmless dev once; per candidate: harmful + harmless twice (KL against the base).
    assert work.probe_passes == 8 + 12 + 6 * (8 + 2 * 12)
    assert work.generated == 0


def test_sequential_steps_generation_and_ceiling_are_counted():
    work = count_work(ANCHORS, [(4, 6)], 1, attribution=True, ceiling=True, dev_generate=16)
    every = 40 + 20 + 60 + 20 + 8 + 4 + 12
    assert work.anchor_passes == 2 * every + 3 * (40 + 20)
    assert work.probe_passes == 8 + 12 + (8 + 2 * 12 + 8 + 4)
    assert work.generated == 2 * (8 + 12)
    assert Work(10, 20, 4, 1, dev_reply_tokens=8).seconds(per_pass=0.5, per_token=0.25) == 23.0
    assert "≈ 0.4 min" in describe(Work(10, 20, 4, 1, dev_reply_tokens=8), 0.5, 0.25)


def test_anchor_passes_are_priced_by_the_layers_they_run():
    def work(layer_sets, strategies=1, attribution=False):
        return count_work(
            ANCHORS, layer_sets, strategies, attribution=attribution, ceiling=False, dev_generate=0, num_layers=10
        )

    every = 40 + 20 + 60 + 20 + 8 + 4 + 12
    # Single layers: one round that stops after the deepest (layer 6 of 10: 7 layers run).
    assert work([(4,), (6,)]).anchor_layer_share == 0.7
    # Two steps at 4 then 6: the first round runs layers 0-4, the second 4-6 above the replayed trunk.
    sequential = work([(4, 6)])
    assert sequential.anchor_passes == 2 * every
    assert sequential.anchor_layer_share == (5 + 3) / 2 / 10
    assert sequential.seconds(per_pass=1.0, per_token=0.0) == 2 * every * 0.4 + sequential.probe_passes
    assert "running 40% of the layers" in describe(sequential, 1.0, 0.0)
    # Backward passes of attribution run every layer.
    attributed = work([(4, 6)], attribution=True)
    backward = 3 * (40 + 20)
    assert attributed.anchor_passes * attributed.anchor_layer_share == pytest.approx(2 * every * 0.4 + backward)
    # The model's size unknown: every pass priced as a whole one, as before.
    assert (
        count_work(ANCHORS, [(4, 6)], 1, attribution=False, ceiling=False, dev_generate=0).anchor_layer_share == 1
    )


def test_replies_to_the_harmless_anchors_are_generated_and_collected_again():
    plain = count_work(ANCHORS, [(4,)], 1, attribution=False, ceiling=False, dev_generate=16)
    work = count_work(
        ANCHORS, [(4,)], 1, attribution=False, ceiling=False, dev_generate=16, harmless_reply_tokens=24
    )
    assert work.anchor_replies == 60
    assert work.anchor_passes == plain.anchor_passes + 60  # each answered prompt is collected once more
    assert work.generated_tokens == plain.generated_tokens + 60 * 24
    assert work.seconds(0.0, 1.0) - plain.seconds(0.0, 1.0) == 60 * 24
    assert "60 harmless anchor replies (2.40 s each)" in describe(work, 0.01, 0.1)
    # Replies already in the anchors (a tune study builds them first) are not counted twice.
    ready = count_work(
        {**ANCHORS, "safe_replies": [None] * 60},
        [(4,)],
        1,
        attribution=False,
        ceiling=False,
        dev_generate=16,
        harmless_reply_tokens=24,
    )
    assert ready.anchor_passes == work.anchor_passes


def test_apply_prints_the_estimate_before_the_work(located, tmp_path):
    _, artifact = located("llama")
    args = [a for a in apply_args(artifact, tmp_path / "out") if a != "-q"]
    result = run_cli(*args)
    lines = result.stderr.splitlines()
    first_estimate = next(i for i, line in enumerate(lines) if line.startswith("estimate:"))
    first_anchor = next(i for i, line in enumerate(lines) if "anchors:" in line)
    assert first_estimate < first_anchor


def test_apply_prices_the_harmless_anchor_replies_before_generating_them(located, tmp_path):
    _, artifact = located("llama")
    args = [a for a in apply_args(artifact, tmp_path / "out") if a != "-q"]
    result = run_cli(*args, "--harmless-reply-tokens", "4")
    lines = result.stderr.splitlines()
    estimate = next(i for i, line in enumerate(lines) if line.startswith("estimate:"))
    assert "harmless anchor replies" in lines[estimate]
    assert estimate < next(i for i, line in enumerate(lines) if "anchors: harmless replies" in line)
