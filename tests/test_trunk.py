"""Replaying the unedited layers below an edit gives the same passes, bit for bit, on tiny models."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.measure.probes import refusal_scores, token_kl
from sparse_edit.model.batching import encode_prompts
from sparse_edit.model.generation import generate_tokens
from sparse_edit.model.incremental import incremental_replies
from sparse_edit.model.loading import load_model
from sparse_edit.model.trunk import TrunkCache
from sparse_edit.options import LocateOptions

QUIET = Reporter(quiet=True)
TEXTS = ("hello there", "a b c d e", "why", "how do I", "tell me a story about the sea", "x", "one two", "no")


def loaded_model(tiny_models, family: str, dtype: str = "float32"):
    options = LocateOptions.model_construct(model=tiny_models(family, layers=4), device="cpu", dtype=dtype)
    loaded = load_model(options)
    prompts = [Prompt(str(i), "en", text, "harmless") for i, text in enumerate(TEXTS)]
    return loaded, encode_prompts(loaded.tokenizer, prompts)


def edit_at(loaded, layer: int, scale: float = 0.5):
    """An edit context: a few MLP input rows of ``layer`` changed, restored on exit."""
    mlp = loaded.family.mlp(loaded.model, layer)
    weight = next(mlp.parameters())

    class Edit:
        def __enter__(self):
            self.saved = weight.data.clone()
            generator = torch.Generator().manual_seed(layer)
            with torch.no_grad():
                weight[:6] += scale * torch.randn(weight[:6].shape, generator=generator).to(weight.dtype)

        def __exit__(self, *exc):
            weight.data.copy_(self.saved)

    return Edit


@pytest.mark.parametrize(("family", "dtype"), [("llama", "float32"), ("gpt2", "float32"), ("qwen2", "bfloat16")])
def test_passes_replaying_the_trunk_equal_plain_passes_bit_for_bit(tiny_models, family, dtype):
    loaded, encoded = loaded_model(tiny_models, family, dtype)
    edit = edit_at(loaded, 2)
    plain_kl = token_kl(loaded, encoded, 3, edit)
    plain_scores = refusal_scores(loaded, encoded, 3, edit)
    trunk = TrunkCache(loaded, depth=2)
    with trunk.replaying([2]):
        first_kl = token_kl(loaded, encoded, 3, edit)
        assert trunk.stats.misses == 3 and trunk.stats.hits == 3  # the edited pass replays the base pass's trunk
        again_kl = token_kl(loaded, encoded, 3, edit)
        scores = refusal_scores(loaded, encoded, 3, edit)
    # Both models' passes of the second KL and the log-odds passes (same inputs, fewer logits) replay it.
    assert trunk.stats.misses == 3 and trunk.stats.hits == 3 + 6 + 3
    assert first_kl == again_kl == plain_kl
    assert plain_kl[0] > 0, "the edit changes the logits, so equal KLs are not a trivial zero"
    assert scores == plain_scores


def test_the_trunk_keeps_a_layer_edited_below_it_out(tiny_models):
    loaded, _ = loaded_model(tiny_models, "llama")
    trunk = TrunkCache(loaded, depth=3)
    assert trunk.covers([3]) and not trunk.covers([2, 3])
    with pytest.raises(ValueError, match="layer 2"), trunk.replaying([2, 3]):
        pass


def test_a_wrong_trunk_would_show_in_the_passes(tiny_models):
    """Guards the test above: replaying a trunk that an edit below it changed gives other logits."""
    loaded, encoded = loaded_model(tiny_models, "llama")
    edit = edit_at(loaded, 0)
    plain_kl = token_kl(loaded, encoded, 4, edit)
    trunk = TrunkCache(loaded, depth=2)
    with trunk.replaying([]):  # told (wrongly) that nothing below layer 2 is edited
        token_kl(loaded, encoded, 4, edit)  # keeps the base model's trunk
        with edit():
            stale = refusal_scores(loaded, encoded, 4, all_positions=True)
    with edit():
        fresh = refusal_scores(loaded, encoded, 4, all_positions=True)
    assert plain_kl[0] > 0 and stale != fresh


def test_generation_and_incremental_replies_are_unchanged_inside_the_trunk(tiny_models):
    loaded, encoded = loaded_model(tiny_models, "qwen2")
    base = generate_tokens(loaded, encoded, 8, 3, QUIET)
    edit = edit_at(loaded, 3, scale=2.0)
    with edit():
        plain = generate_tokens(loaded, encoded, 8, 3, QUIET)
    assert plain != base
    trunk = TrunkCache(loaded, depth=3)
    with trunk.replaying([3]), edit():
        replayed = [incremental_replies(loaded, encoded, base, 8, 3, QUIET).tokens for _ in range(2)]
        generated = generate_tokens(loaded, encoded, 8, 3, QUIET)
    assert replayed == [plain, plain] and generated == plain
    assert trunk.stats.hits == 3  # the second teacher-forced check replays the first's trunk
    assert trunk.stats.bypassed > 0  # generation steps ran every layer


def test_trials_replaying_the_trunk_measure_what_trials_without_it_measure(located, tmp_path):
    import optuna

    from sparse_edit.api import tune_options
    from sparse_edit.tuning.study import prepare
    from sparse_edit.tuning.trial import TrialRunner
    from tests.test_tune_workers import cli_settings

    _, artifact = located("llama", layers=4)
    options = tune_options(
        artifact=artifact,
        output=tmp_path / "unused",
        candidate_layers=[2, 3],
        max_edit_layers=2,
        reuse_base_replies=True,
        **cli_settings(),
    )
    runner, space = prepare(options, QUIET)
    assert runner.trunk.depth == 2

    def beside(options, **kwargs) -> TrialRunner:
        """A runner of the same model, anchors and layers as ``runner``."""
        return TrialRunner(
            options,
            runner.loaded,
            runner.artifact,
            runner.anchors,
            runner.low_langs,
            runner.layers,
            QUIET,
            **kwargs,
        )

    plain = beside(options, trunk_depth=0)
    runner._base_logits.budget = 0  # the base model's logits come from its replayed stack every time
    base, plain_base = runner.verdicts(), plain.verdicts()
    assert base == plain_base
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        settings = space.suggest(study.ask())
        assert runner.run(settings, base) == plain.run(settings, plain_base), settings
    assert runner.trunk.stats.hits > 0 and runner._base_stack.stats.hits > 0
    assert plain.trunk.stats.hits == plain.trunk.stats.misses == 0
    # --no-replay-trunk runs every layer in every pass, the base model's too.
    off = beside(options.model_copy(update={"replay_trunk": False}))
    assert off.trunk.depth == 0 and off._base_stack.depth == 0


def test_apply_measures_its_candidates_the_same_with_the_trunk_replayed(located, tmp_path, monkeypatch):
    from sparse_edit.edit import dev_choice
    from tests.helpers import run_cli

    _, artifact = located("llama", layers=4)
    depths: list[int] = []

    def apply(name: str) -> dict:
        args = ["apply", "--artifact", artifact, "-o", tmp_path / name, "--layer", "auto"]
        args += ["--candidate-layers", "2,3", "--device", "cpu", "-q", "--json"]
        return json.loads(run_cli(*args).stdout)

    def every_layer(loaded, depth):
        depths.append(depth)
        return TrunkCache(loaded, 0)

    replayed = apply("replayed")
    monkeypatch.setattr(dev_choice, "TrunkCache", every_layer)
    plain = apply("plain")
    assert depths == [2]  # the candidates' lowest layer, run in full here
    assert replayed["candidates"] == plain["candidates"]
    assert all(row["kl_harmless"] > 0 for row in plain["candidates"])


@pytest.mark.parametrize(
    ("family", "dtype"),
    [
        ("llama", "float32"),
        ("gpt2", "float32"),
        ("gemma3_text", "float32"),
        ("phi3", "float32"),
        ("qwen2", "bfloat16"),
    ],
)
def test_a_pass_stopped_after_a_layer_reads_that_layer_and_below_bit_for_bit(tiny_models, family, dtype):
    from sparse_edit.model.batching import batches
    from sparse_edit.model.hooks import capture, run_base
    from sparse_edit.model.layer_patch import stopping_after

    loaded, encoded = loaded_model(tiny_models, family, dtype)
    (batch,) = list(batches(encoded, len(encoded), int(loaded.tokenizer.pad_token_id)))
    inputs = batch.model_inputs(loaded.input_device)
    layers = loaded.family.layers(loaded.model)
    top_calls = []
    loaded.family.mlp(loaded.model, 3).register_forward_pre_hook(lambda *_: top_calls.append(1))

    def read(last: int | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        captured: list[torch.Tensor] = []
        sink = capture(
            loaded.family,
            loaded.model,
            range(last + 1 if last is not None else 4),
            "mlp_input",
            lambda _layer, tensor: captured.append(tensor.clone()),
        )
        with sink, stopping_after(loaded, last) if last is not None else nullcontext(), torch.inference_mode():
            hidden = run_base(loaded.model, inputs, hidden_states=True).hidden_states
        return captured, list(hidden)

    full_mlp, full_hidden = read(None)
    assert len(top_calls) == 1
    cut_mlp, cut_hidden = read(1)
    assert len(top_calls) == 1, "the layers above the last one read are not run"
    assert all(torch.equal(a, b) for a, b in zip(cut_mlp, full_mlp[:2], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(cut_hidden[:3], full_hidden[:3], strict=True))
    assert not torch.equal(cut_hidden[-1], full_hidden[-1])  # what lies above is not the model's
    assert all("forward" not in layer.__dict__ for layer in layers)  # restored on exit
    assert torch.equal(read(None)[1][-1], full_hidden[-1])


def test_a_sequential_apply_writes_the_same_edit_with_its_gathers_replaying_the_trunk(
    located, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from sparse_edit.edit import candidates
    from tests.helpers import run_cli

    _, artifact = located("llama", layers=4)
    made: list[TrunkCache] = []

    def apply(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
        out = tmp_path / name
        args = ["apply", "--artifact", artifact, "-o", out, "--layer", "2,3", "--device", "cpu", "-q", "--json"]
        report = json.loads(run_cli(*args).stdout)
        weights: dict[str, torch.Tensor] = {}
        for file in sorted(out.glob("*.safetensors")):
            weights.update(load_file(file))
        return report, weights

    def recorded(loaded, depth, *rest):
        made.append(TrunkCache(loaded, depth, *rest))
        return made[-1]

    monkeypatch.setattr(candidates, "TrunkCache", recorded)
    replayed, replayed_weights = apply("replayed")
    assert [trunk.depth for trunk in made] == [2]
    # The second step's gathers see the anchors the first step's gathers saw: each replays the trunk.
    assert made[0].stats.hits > 0 and made[0].stats.hits == made[0].stats.misses
    monkeypatch.setattr(candidates, "TrunkCache", lambda loaded, depth, *rest: TrunkCache(loaded, 0))
    plain, plain_weights = apply("plain")
    assert replayed["candidates"] == plain["candidates"]
    assert replayed_weights.keys() == plain_weights.keys()
    assert all(torch.equal(replayed_weights[key], plain_weights[key]) for key in plain_weights)
