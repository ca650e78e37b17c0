"""Each strategy's own settings: one options model per strategy, the fields its solve reads.

A strategy names its model (``Strategy.settings_model``) and reads its settings through it
(``PaperOptions.of(options)``), so its solve takes what it reads and nothing else. The models live
here, not beside the strategies, because ``ApplyOptions`` is their union (every field stays one flag
and one TOML key) and options must not import the strategies' torch code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from sparse_edit.options.base import Options
from sparse_edit.options.roles import READ, TEXT

NeuronChoice = Literal["low-union", "low-only", "reference", "all"]
DetectorMode = Literal["refuse", "release"]
DetectorResponse = Literal["square", "step"]
DetectorPushAt = Literal["every-token", "prompt-end"]


class RidgeOptions(Options):
    """The ridge weight every closed-form fit shares."""

    panel: ClassVar[str | None] = "every strategy"

    lam: float = Field(
        1e-2, gt=0, description="Ridge weight, relative to the mean squared key norm per dimension."
    )


class SolverOptions(RidgeOptions):
    """The low-rank solve of the paper and output strategies."""

    panel: ClassVar[str | None] = "paper and output strategies"

    rank: int = Field(32, ge=1, description="Maximum rank of the update.")
    nullspace: Literal["soft", "hard"] = Field(
        "soft",
        description="soft: penalise change on harmless inputs (gamma); hard: solve only inside the directions "
        "harmless inputs barely use (relative eigenvalue threshold).",
    )
    nullspace_threshold: float = Field(
        1e-3, gt=0, lt=1, description="hard null space: keep eigen-directions below this fraction of the largest."
    )


class GainOptions(Options):
    """How far past the reference level the output and detector strategies aim."""

    panel: ClassVar[str | None] = "output and detector strategies"

    gain: float = Field(
        16.0,
        gt=0,
        description="output and detector strategies: multiple of the refusal-projection gap to aim for. The fit "
        "reaches only part of it, so the default is large; lower it to trade attack-success reduction for less "
        "over-refusal.",
    )


class PaperOptions(SolverOptions):
    """``paper``: the published edit of the safety neurons' input rows."""

    panel: ClassVar[str | None] = "paper strategy"
    table: ClassVar[str | None] = "paper"

    neuron_lang: Annotated[str | None, TEXT] = Field(
        None, description="Whose safety-neuron set to edit (default: the reference language's)."
    )
    proj: Literal["gate", "gate,up"] = Field(
        "gate", description="Edit gate_proj rows only, or gate_proj and up_proj rows (same solve, two targets)."
    )
    gamma: float = Field(
        0.15,
        gt=0,
        description="paper strategy: weight of the harmless (null-space) term, normalised per token; larger "
        "keeps harmless inputs closer to unchanged.",
    )


class OutputOptions(SolverOptions, GainOptions):
    """``output``: down_proj columns of a neuron set."""

    panel: ClassVar[str | None] = "output strategy"
    table: ClassVar[str | None] = "output"

    output_neurons: NeuronChoice = Field(
        "low-union",
        description="output strategy: edit the columns of the union of the low-resource languages' safety neurons "
        "(low-union), that union without the reference language's set (low-only), the reference language's set, "
        "or all neurons.",
    )
    max_edit_neurons: int | None = Field(
        512, ge=1, description="output strategy: at most this many columns per layer (strongest mean Cohen's d)."
    )
    output_gamma: float = Field(
        100.0,
        gt=0,
        description="output strategy: its own harmless weight (its keys are neuron activations, which harmless "
        "prompts share more; smaller values leak onto harmless prompts).",
    )
    harmless_tail_weight: float = Field(
        1.0,
        ge=0,
        description="output strategy: also fit the harmless prompts' last --positions tokens to no shift, with "
        "this total weight relative to the harmful rows (0 = off). The template tail is alike for every prompt, "
        "so without it the edit pushes harmless prompts toward refusal too.",
    )
    reference_weight: float = Field(
        0.0,
        ge=0,
        description="output strategy: also fit the reference language's harmful prompts to no shift, with this "
        "total weight relative to the low-resource harmful rows (0 = off). That language already refuses; the "
        "rows teach the edit to leave its prompts, harmful or harmless, where they are.",
    )


class DetectorOptions(RidgeOptions, GainOptions):
    """``detector``: one neuron rewritten as a thresholded harmfulness detector."""

    panel: ClassVar[str | None] = "detector strategy"
    table: ClassVar[str | None] = "detector"

    detector_margin: float = Field(
        1.0,
        gt=0,
        description="detector strategy: harmless rows are fitted to a score of -margin (harmful ones to +1); "
        "larger values make the detector fire on fewer prompts of either kind.",
    )
    detector_mode: DetectorMode = Field(
        "refuse",
        description="detector strategy: refuse (harmful prompts' last tokens fire it; it adds the refusal "
        "direction, raising them to the reference harmful level) or release (harmless prompts' last tokens fire "
        "it; it subtracts the refusal direction, lowering them to the reference harmless level: applied after "
        "another edit, it takes back that edit's push on benign prompts).",
    )
    detector_sharpness: float = Field(
        8.0,
        gt=0,
        description="detector strategy: the gate row is this multiple of the detector, so the neuron's response "
        "act(k s) s is near 0 for negative scores s (a larger k is a harder threshold).",
    )
    detector_reference: Literal["fire", "quiet"] = Field(
        "fire",
        description="detector strategy, refuse mode: fire (the reference language's harmful prompts are among the "
        "rows the probe fires on) or quiet (they join the harmless rows it stays below, so the neuron keeps still "
        "on the reference language of either class and the reference behaviour, the one the edit copies, does "
        "not move).",
    )
    detector_gate: Annotated[list[Path] | None, READ] = Field(
        None,
        description="detector strategy: gates written by sparse-edit gates (gate.safetensors), one per edited layer: "
        "the neuron at each layer computes that layer's gate (a classifier probe whose per-language thresholds are "
        "read from the state) instead of fitting a ridge probe; the edited layers are exactly the gates' layers (one "
        "gate per layer), refuse mode, one neuron (pair) per layer. Naming gates implies, unless given: --strategy "
        "detector, --layer gates, --detector-response step, --detector-push-at prompt-end (with "
        "--harmless-reply-tokens 24) and --gain 16 per gate.",
    )

    @field_validator("detector_gate", mode="before")
    @classmethod
    def _one_gate_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str | Path) else value

    detector_response: DetectorResponse = Field(
        "square",
        description="detector strategy: square (one neuron, gate and up rows the detector, its push grows as the "
        "square of the score past the threshold) or step (two neurons per detector whose outputs cancel past "
        "--detector-ramp, so every prompt it fires on gets the same push; their up rows are a bias direction "
        "fitted on the harmless tokens).",
    )
    detector_ramp: float = Field(
        0.25,
        gt=0,
        description="detector strategy, step response: the detector score at which the push reaches its full "
        "height (a gate's scores have unit spread on its harmful anchors); below it the push ramps up from 0.",
    )
    detector_push_at: DetectorPushAt = Field(
        "every-token",
        description="detector strategy, step response: where a firing pair may push. every-token (its up rows are a "
        "bias direction, about 1 on every token) or prompt-end (its up rows are a direction about 1 on the prompts' "
        "last tokens and about 0 on every harmless prompt and reply token, so the pair stays still while the model "
        "reads the prompt's content and while it writes its reply, even where its gate row fires).",
    )
    detector_neurons: Literal["one", "per-language"] = Field(
        "one",
        description="detector strategy: one neuron with one probe fitted on every low-resource language, or one "
        "neuron per low-resource language, each probe fitted on that language's harmful anchors against all harmless "
        "ones, their output scales fitted jointly and kept non-negative (refuse mode only).",
    )

    @model_validator(mode="after")
    def _refuse_mode_settings(self) -> DetectorOptions:
        # Checked with the settings, before any model loads.
        if self.detector_push_at == "prompt-end" and self.detector_response != "step":
            raise ValueError("--detector-push-at prompt-end needs --detector-response step (the pair's up rows)")
        if self.detector_mode != "refuse":
            if self.detector_neurons == "per-language":
                raise ValueError("--detector-neurons per-language works in --detector-mode refuse only")
            if self.detector_reference == "quiet":
                raise ValueError("--detector-reference quiet works in --detector-mode refuse only")
        return self
