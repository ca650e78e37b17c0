"""One trial: solve an edit from cached features, apply it in memory, judge dev replies, measure harmless KL.

Features are collected once per feature signature for every searched layer (a trial that changes
only gain or weights reuses them); the base model's dev replies are generated once per study; the
decoder layers below the lowest searched layer run once per anchor and dev input (``TrunkCache``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.edit.anchors import Anchors
from sparse_edit.edit.candidates import build_candidates, stored_dtypes_for
from sparse_edit.edit.delta import applied_in_memory
from sparse_edit.edit.gather import gather, requests
from sparse_edit.edit.layer_data import LayerData
from sparse_edit.edit.plan import make_plan
from sparse_edit.errors import SparseEditError
from sparse_edit.measure.judge import KeywordJudge
from sparse_edit.measure.probes import KeptLogits, base_logits, token_kl
from sparse_edit.model.features import FeatureRequest
from sparse_edit.model.generation import decode_reply, generate_tokens
from sparse_edit.model.incremental import incremental_replies
from sparse_edit.model.loading import LoadedModel
from sparse_edit.model.trunk import TrunkCache
from sparse_edit.neurons.artifact import LocateArtifact
from sparse_edit.options import ApplyOptions, TuneOptions
from sparse_edit.tuning.outcome import DevSet, TrialOutcome, Verdicts, outcome

# Settings of tune itself: not part of the apply config a trial stands for.
TUNE_ONLY = frozenset(TuneOptions.model_fields) - frozenset(ApplyOptions.model_fields) | {"output", "overwrite"}
# Feature sets kept at once (each holds every searched layer's rows and Grams).
FEATURE_CACHE_SIZE = 4
# Trunk outputs kept for the study: every anchor's (the sequential gathers) and every dev input's.
TRUNK_BUDGET = 2 << 30
# Base-model logits of the harmless dev prompts kept for the KL of every trial (beyond it: recomputed).
BASE_LOGITS_BUDGET = 2 << 30


def apply_settings(options: TuneOptions, settings: dict[str, Any]) -> dict[str, Any]:
    """The apply settings (JSON values, no output) of the edit ``settings`` describe on top of ``options``."""
    values = options.model_dump(mode="json", exclude=set(TUNE_ONLY), exclude_none=True)
    values.pop("candidate_layers", None)  # the trial fixes --layer
    values.update(settings)
    return values


def _request_key(request: FeatureRequest) -> str:
    subsets = {
        layer: hashlib.sha256(index.numpy().tobytes()).hexdigest()[:16]
        for layer, index in request.neuron_subsets.items()
    }
    return repr(
        (
            list(request.layers),
            list(request.sites),
            sorted(subsets.items()),
            request.positions,
            request.gram,
            request.tail_rows,
            list(request.moment_sites),
        )
    )


class _PhaseClock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


class TrialRunner:
    """Measures trials of one study: the model, anchors, dev set and feature cache stay loaded."""

    def __init__(
        self,
        options: TuneOptions,
        loaded: LoadedModel,
        artifact: LocateArtifact,
        anchors: Anchors,
        low_langs: list[str],
        layers: Sequence[int],
        reporter: Reporter,
        trunk_depth: int | None = None,
    ) -> None:
        """``trunk_depth``: decoder layers replayed from their first pass over each anchor and dev input (default: those
        below the lowest searched layer; 0 runs every layer every time)."""
        self.options = options
        self.loaded = loaded
        self.artifact = artifact
        self.anchors = anchors
        self.low_langs = low_langs
        self.layers = list(layers)
        self.reporter = reporter
        self.dev = DevSet.from_anchors(anchors, low_langs, options.reference_lang)
        self.judge = KeywordJudge()
        self._features: dict[str, dict[int, LayerData]] = {}
        self._stored_dtypes: dict[str, torch.dtype] = {}
        if trunk_depth is None:
            trunk_depth = min(self.layers) if options.replay_trunk else 0
        self.trunk = TrunkCache(loaded, trunk_depth, TRUNK_BUDGET)
        # The base model's whole decoder stack replayed: logits kept within budget cost nothing, the rest the LM head.
        self._base_stack = TrunkCache(loaded, loaded.num_layers if trunk_depth else 0)
        # Where the last trial's time went (features, solve, replies, kl), for pareto.json.
        self.phase_seconds: dict[str, float] = {}
        self._base_logits = KeptLogits(self._replayed_base_logits, BASE_LOGITS_BUDGET)
        # The base model's dev reply tokens, per class: the drafts every trial's replies are checked against.
        self.base_tokens: dict[str, list[list[int]]] = {}

    def _replayed_base_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with self._base_stack.replaying([]):
            return base_logits(self.loaded)(inputs)

    def trial_options(self, settings: dict[str, Any]) -> ApplyOptions:
        """The trial's apply options; settings the options model refuses together skip the trial."""
        from pydantic import ValidationError

        values = apply_settings(self.options, settings)
        try:
            return ApplyOptions.model_validate({**values, "output": self.options.output / "edited"})
        except ValidationError as exc:
            raise SparseEditError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None

    def verdicts(self, edit: Callable[[], AbstractContextManager[object]] | None = None) -> Verdicts:
        """Greedy dev replies of the base model (or with ``edit`` applied), judged; a reply stops once its
        verdict is settled (the label is the same as the full reply's). The base model's reply tokens are
        kept; with --reuse-base-replies an edited model's replies are found from them (``incremental_replies``)."""
        bs, tokens = self.options.batch_size, self.options.max_new_tokens
        labels: dict[str, tuple[str, ...]] = {}
        for group, items in (("harmful", self.dev.harmful), ("harmless", self.dev.harmless)):
            label = f"dev replies: {group}"

            def settled(prompt: Prompt, reply: str) -> bool:
                return self.judge.settled(prompt.lang, reply)

            if edit is None:
                rows = generate_tokens(self.loaded, items, tokens, bs, self.reporter, label, settled)
                self.base_tokens[group] = rows
            elif self.options.reuse_base_replies:
                drafts = self.base_tokens.get(group) or [[] for _ in items]
                with edit():
                    rows = incremental_replies(
                        self.loaded, items, drafts, tokens, bs, self.reporter, label, settled
                    ).tokens
            else:
                with edit():
                    rows = generate_tokens(self.loaded, items, tokens, bs, self.reporter, label, settled)
            labels[group] = tuple(
                self.judge.judge(
                    item.prompt.text, item.prompt.lang, decode_reply(self.loaded.tokenizer, row)
                ).label
                for item, row in zip(items, rows, strict=True)
            )
        return Verdicts(labels["harmful"], labels["harmless"])

    def features(self, options: ApplyOptions) -> dict[int, LayerData]:
        """Every searched layer's features for this trial's strategy and neuron sets (collected once)."""
        wide = options.model_copy(update={"layer": "auto", "candidate_layers": self.layers})
        plan = make_plan(wide, self.artifact, self.loaded.num_layers, self.low_langs)
        layers = sorted({ls[0] for ls in plan.layer_sets})
        rows, grams = requests(plan, layers, wide)
        key = repr((_request_key(rows), _request_key(grams), options.target))
        if key not in self._features:
            if len(self._features) >= FEATURE_CACHE_SIZE:
                self._features.pop(next(iter(self._features)))
            with self.trunk.replaying([]):  # keeps the anchors' trunk for the sequential gathers of later trials
                self._features[key] = gather(self.loaded, self.anchors, layers, plan, wide, self.reporter)
        return self._features[key]

    def run(self, settings: dict[str, Any], base: Verdicts) -> TrialOutcome:
        """Solve the edit ``settings`` describe and measure it on the dev set (the model is left unchanged)."""
        clock = _PhaseClock()
        options = self.trial_options(settings)
        plan = make_plan(options, self.artifact, self.loaded.num_layers, self.low_langs)
        shared = self.features(options)
        clock.lap("features")
        (candidate,) = build_candidates(
            self.loaded, self.anchors, plan, options, self._stored_dtypes, self.reporter, shared, self.trunk
        )
        stored_dtypes = stored_dtypes_for(self.loaded.checkpoint, candidate.edits, self._stored_dtypes)
        clock.lap("solve")

        def edit() -> AbstractContextManager[object]:
            return applied_in_memory(self.loaded.model, candidate.edits, stored_dtypes)

        edited_layers = sorted({e.layer for e in candidate.edits})
        trunk = self.trunk.replaying(edited_layers) if self.trunk.covers(edited_layers) else nullcontext()
        with trunk:
            edited = self.verdicts(edit)
            clock.lap("replies")
            kl, _ = token_kl(self.loaded, self.dev.harmless, self.options.batch_size, edit, base=self._base_logits)
            clock.lap("kl")
        self.phase_seconds = clock.laps
        changed = int(candidate.diagnostics["changed_parameters"])
        return outcome(self.dev, base, edited, kl, changed, self.loaded.checkpoint.parameter_count)
