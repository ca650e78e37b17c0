"""``sparse-edit tune``'s settings: the search space's bounds, its constraints and the choice rule."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, PositiveInt, model_validator

from sparse_edit.options.apply import ApplyOptions
from sparse_edit.options.base import FormerName
from sparse_edit.options.roles import READ, STORE, TEXT, WRITTEN
from sparse_edit.options.traits import COMMA_LIST, NOT_IN_STUDY_KEY, ShortFlag


def _registered_strategies() -> list[str]:
    from sparse_edit.strategy_names import registered

    return list(registered())


class TuneOptions(ApplyOptions):
    """``sparse-edit tune``: search the edit's settings on the dev split; write the front and the chosen edit.

    Every apply setting is a fixed setting of the search unless a strategy's search space varies it.
    """

    output: Annotated[Path, WRITTEN, ShortFlag("-o"), NOT_IN_STUDY_KEY] = Field(
        description="Folder for the study: pareto.json, pareto.md, pareto.png, chosen.toml, front/trial-N.toml (the "
        "apply config of every trial on the front), study.db (and "
        "edited/ with --apply), written atomically. While it runs, the study is journaled beside it "
        "(.NAME.tune.db) so a killed run resumes."
    )
    strategy: Annotated[list[str], TEXT, COMMA_LIST] = Field(
        default_factory=_registered_strategies,
        description="Strategies the search chooses from (default: every registered one the model supports); "
        "chains such as paper+detector may be named too.",
    )
    layer: Annotated[str, TEXT] = Field(
        "auto", description="tune searches the layer: keep auto and name the layers with --candidate-layers."
    )
    candidate_layers: Annotated[list[int] | None, COMMA_LIST] = Field(
        None, description="Layers the search chooses from (default: every layer from L/3 to L-2)."
    )
    candidate_gates: Annotated[list[Path] | None, READ] = Field(
        None,
        description="Gates sparse-edit gates screened (gate.safetensors, front/gate-N.safetensors): every trial "
        "picks one as --detector-gate (strategy detector at the gate's layer; gain and sharpness searched) and "
        "records the screen's prediction beside what its dev replies measured. Replaces --strategy and "
        "--candidate-layers.",
    )
    candidate_positions: Annotated[list[PositiveInt] | None, COMMA_LIST] = Field(
        None,
        description="Anchor rows per prompt (--positions) the search chooses from, e.g. 1,4 (default: --positions, "
        "fixed). Each value is a feature set of its own, collected once for every searched layer.",
    )
    max_edit_layers: int = Field(
        1,
        ge=1,
        le=3,
        description="Layers one trial may edit, one after another: above 1, a trial may add further searched layers "
        "(each solved on features collected with the earlier layers' edits applied, so such trials take longer).",
    )
    trials: Annotated[int, NOT_IN_STUDY_KEY] = Field(
        40, ge=1, description="Trials in the study (a resumed study counts the finished ones)."
    )
    timeout: Annotated[int | None, NOT_IN_STUDY_KEY] = Field(
        None, ge=1, description="Start no new trial after this many seconds (the study so far is still written)."
    )
    max_new_tokens: Annotated[int, FormerName("reply_tokens")] = Field(
        24,
        ge=1,
        validation_alias=AliasChoices("max_new_tokens", "reply_tokens"),
        description="Tokens generated per dev reply (greedy), base once and every trial; the keyword judge "
        "reads them (the same setting as eval's; --reply-tokens, its former name, still works).",
    )
    max_over_refusal: Annotated[float, NOT_IN_STUDY_KEY] = Field(
        0.02,
        ge=0,
        le=1,
        description="Choice rule: the largest allowed rise of the pooled dev harmless refusal rate (0.02 = 2 "
        "points).",
    )
    max_over_refusal_per_group: Annotated[float | None, NOT_IN_STUDY_KEY] = Field(
        None,
        ge=0,
        le=1,
        description="Choice rule: the largest allowed rise of the dev harmless refusal rate within any one harmless "
        "source (a --harmless or --dev-harmless spec) and kind (a .jsonl row's kind), so that one kind of benign "
        "prompt cannot hide its cost in the pooled figure (default: --max-over-refusal).",
    )
    max_reference_change: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Constraint: the largest share of reference-language dev prompts (both classes) whose verdict "
        "the edit moves (refusals gained or lost). The reference language is the behaviour the edit copies.",
    )
    max_newly_answered: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Constraint: the largest share of dev harmful prompts the base model refused and the edited "
        "model answers (trials above it are infeasible for the search and the choice).",
    )
    max_newly_invalid: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Constraint: the largest share of dev prompts (harmful and harmless) whose valid base reply the "
        "edited model turns invalid (a loop, another script, nothing): breaking a reply is no refusal. Replies "
        "flip between valid and invalid by chance too, so the limit is looser than --max-newly-answered.",
    )
    max_changed_share: float = Field(
        0.001,
        gt=0,
        le=1,
        description="Constraint: the largest share of the checkpoint's stored parameters a trial may change "
        "(0.001 = 0.1 %).",
    )
    kl_budget: Annotated[float, NOT_IN_STUDY_KEY] = Field(
        0.05,
        gt=0,
        description="Choice rule: the largest mean harmless per-token KL (nats) a chosen trial may have.",
    )
    reuse_base_replies: bool = Field(
        False,
        description="Find each trial's dev replies from the base model's (one teacher-forced pass, generation "
        "only from where the edited model diverges): faster when trials leave most replies unchanged.",
    )
    replay_trunk: Annotated[bool, NOT_IN_STUDY_KEY] = Field(
        True,
        description="Run the decoder layers below the lowest --candidate-layers once per anchor and dev input "
        "and replay their output in every trial's passes without generation (a two-layer edit's second "
        "feature gather, KL, the check of --reuse-base-replies): the same numbers, bit for bit, at a fraction "
        "of the cost. Off: those passes run every layer.",
    )
    apply: Annotated[bool, NOT_IN_STUDY_KEY] = Field(
        False, description="Also write the chosen edit to OUTPUT/edited (as apply would)."
    )
    storage: Annotated[str | None, STORE, NOT_IN_STUDY_KEY] = Field(
        None,
        description="Keep the study in storage several tune processes share, one per GPU or machine: an RDB URL "
        "(sqlite:///study.db, postgresql://user@host/db) or a journal file path (appended under a file lock, "
        "for processes on one machine or a shared file system). Every process runs trials until the study holds "
        "--trials; start the others with --worker. Default: a journal beside --output, for one process.",
    )
    worker: Annotated[bool, NOT_IN_STUDY_KEY] = Field(
        False,
        description="Join the study in --storage and run trials only; write nothing to --output (the one "
        "process started without --worker writes the study folder once every trial is done).",
    )

    @classmethod
    def implied_by_gates(cls, count: int) -> dict[str, Any]:
        # The search chooses the strategy, the layer and the gain; naming gates fixes only how they are written.
        searched = ("strategy", "layer", "gain")
        return {key: value for key, value in super().implied_by_gates(count).items() if key not in searched}

    @model_validator(mode="after")
    def _layer_is_searched(self) -> TuneOptions:
        if self.layer != "auto":
            raise ValueError(
                "--layer: tune searches the layer; name the layers to choose from with --candidate-layers"
            )
        return self

    @model_validator(mode="after")
    def _worker_needs_storage(self) -> TuneOptions:
        if self.worker and not self.storage:
            raise ValueError("a worker joins a shared study: give --storage (the same as the other processes')")
        return self
