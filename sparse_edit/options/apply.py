"""``sparse-edit apply``'s settings: the strategies, the layers, the null space and the dev split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from sparse_edit.options.model import ModelOptions
from sparse_edit.options.prompts import PromptOptions
from sparse_edit.options.roles import PROMPTS, READ, TEXT, WRITTEN
from sparse_edit.options.strategies import DetectorOptions, OutputOptions, PaperOptions
from sparse_edit.options.traits import COMMA_LIST, NOT_IN_STUDY_KEY, ShortFlag
from sparse_edit.strategy_names import BUILT_IN

# What naming --detector-gate implies, unless the setting is given too: the gate edit docs/results/gates.md
# measures (each gate a step pair at its own layer, pushing at the prompt's end), and GATE_GAIN per gate, so that
# with the gap spread over the gates' layers each layer gets the push GATE_GAIN gave one gate alone.
GATE_EDIT: dict[str, Any] = {
    "strategy": ["detector"],
    "layer": "gates",
    "detector_response": "step",
    "detector_push_at": "prompt-end",
    "harmless_reply_tokens": 24,  # with prompt-end: its direction is fitted to stay near 0 on replies too
}
GATE_GAIN = 16.0


class ApplyOptions(PaperOptions, OutputOptions, DetectorOptions, ModelOptions, PromptOptions):
    """``sparse-edit apply``: compute the closed-form edit and write the edited checkpoint.

    Each strategy's own settings come from its model in ``options.strategies`` (the strategy reads them
    through it); the fields here are the ones every strategy shares: layers, anchors, dev split.
    """

    artifact: Annotated[Path, READ] = Field(description="Locate artifact (.safetensors) made for this model.")
    allow_other_weights: bool = Field(
        False,
        description="Apply an artifact to a checkpoint of the same shapes whose weights differ from the ones it "
        "was measured on (another seed, a fine-tune); refused otherwise, since neuron statistics belong to their "
        "weights. The manifest records that it was used.",
    )
    output: Annotated[Path, WRITTEN, ShortFlag("-o")] = Field(
        description="Folder for the edited checkpoint (written atomically)."
    )
    overwrite: Annotated[bool, NOT_IN_STUDY_KEY] = Field(False, description="Replace an existing output folder.")
    strategy: Annotated[list[str], TEXT, COMMA_LIST] = Field(
        default_factory=lambda: ["paper"],
        description=f"One of the registered strategies ({', '.join(BUILT_IN)}, or one another package "
        "registers; `sparse-edit strategies` lists them with what each edits and the settings it reads). paper, "
        "the default, is the published edit. Several (paper,output,detector) are compared on the dev split, like "
        "layers. A chain (paper+detector) solves each part in turn, the later on features with the earlier "
        "edits applied; the parts share the flags they read. The defaults of strategy, --layer, --gamma and "
        "--proj are a configuration sparse-edit tune chose on a small instruct model; "
        "tune your own model for its best.",
    )
    layer: Annotated[str, TEXT] = Field(
        "0.75",
        description="Layer to edit: a number; a fraction of the depth (0.75: layer 18 of 24); N,M,... edits those "
        "layers one after another (features re-collected from the partially edited model, the remaining gap "
        "spread over the layers left); auto tries --candidate-layers on a dev split and keeps the best selective "
        "refusal gain within --kl-budget; gates (the default with --detector-gate) edits the gates' layers.",
    )
    candidate_layers: Annotated[list[int] | None, COMMA_LIST] = Field(
        None,
        description="Layers tried by --layer auto, which naming them implies unless --layer is given (default: the "
        "recommended layer and 4 layers from L/3 to L-2).",
    )
    neuron_score: Literal["contrast", "attribution"] = Field(
        "contrast",
        description="How edited neurons are chosen. contrast: the locate artifact's safety-neuron sets (harmful vs "
        "harmless z / Cohen's d). attribution: the same number of neurons per layer, ranked by attribution "
        "patching (gap to the reference-language activation x gradient of the refusal log-odds) on the training "
        "anchors; costs one backward pass per anchor batch.",
    )
    positions: int = Field(
        1,
        ge=1,
        description="Anchor rows per prompt: the last N prompt tokens (the template tail after the request).",
    )
    harmless_reply_tokens: int = Field(
        0,
        ge=0,
        description="Also count the model's own greedy replies to the harmless training prompts (this many tokens "
        "each) among the harmless tokens every strategy keeps unchanged (the Gram, the detector's negatives): "
        "an edit then also stays quiet while the model answers, not only while it reads. 0 = prompts only.",
    )
    anchor_labels: Literal["dataset", "reference-verdict"] = Field(
        "dataset",
        description="How anchor and dev prompts get their class. dataset: the prompt files' labels. "
        "reference-verdict: the model's own verdict on the reference-language version (same class and id): a "
        "harmful prompt it answers there becomes a harmless anchor in every language (the edit keeps it "
        "answered), a harmless one it refuses there is left out. Costs one greedy reply per reference prompt "
        "(--reference-verdict-tokens).",
    )
    reference_verdict_tokens: int = Field(
        24, ge=1, description="--anchor-labels reference-verdict: tokens of each judged reference-language reply."
    )
    ceiling: bool = Field(
        False,
        description="Also measure each candidate's patching ceiling: refusal gain when the edited neurons' "
        "activations of low-resource prompts are replaced by those of the parallel reference prompts.",
    )
    target: Literal["parallel", "class-mean"] = Field(
        "parallel",
        description="parallel: move each low-resource prompt to its reference-language translation (same id); "
        "class-mean: to the mean of reference-language harmful prompts (no parallel data needed).",
    )
    low_langs: Annotated[list[str] | None, TEXT, COMMA_LIST] = Field(
        None,
        description="Languages whose harmful prompts form X_low (default: every language except the reference).",
    )
    dev_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of prompt ids held out (same ids in every language) for dev diagnostics.",
    )
    dev_limit: int = Field(
        24, ge=1, description="At most this many dev prompts per language and class for probes."
    )
    dev_harmless: Annotated[list[str] | None, PROMPTS] = Field(
        None,
        description="Harmless dev prompts of their own (same formats as --harmless), instead of a --dev-fraction "
        "share of --harmless: e.g. a sample of your users' benign traffic, or a kind of prompt the anchors leave "
        "out, to see whether an edit's over-refusal carries over to it. Every --harmless prompt is then an anchor; "
        "a prompt in both is refused.",
    )
    dev_harmless_limit: int | None = Field(
        None,
        ge=1,
        description="At most this many harmless dev prompts per language (default: --dev-limit). tune counts "
        "over-refusal on them: a rise of a few points needs more prompts to show than the attack-success cut.",
    )
    dev_generate: int = Field(
        0,
        ge=0,
        description="Also generate this many tokens for every dev prompt, base and each candidate, and judge the "
        "replies (keyword judge): refusal-rate change on low-resource harmful and on harmless dev prompts. "
        "When on, --layer auto ranks candidates by it (the first-token log-odds miss over-refusal that shows "
        "later in a reply). 0 = off; 16-32 tokens catch the opening refusal.",
    )
    kl_budget: float = Field(0.05, gt=0, description="Harmless per-token KL (nats) that --layer auto may spend.")
    seed: int = Field(0, description="Seed of the dev split.")

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: list[str]) -> list[str]:
        # The registry's names only: nothing heavy is imported.
        from sparse_edit.strategy_names import chain_parts, registered

        names = registered()
        unknown = [part for name in value for part in chain_parts(name) if part not in names]
        if unknown:
            raise ValueError(f"unknown strategy {unknown[0]!r}; registered: {', '.join(names)}")
        repeated = [name for name in value if len(set(chain_parts(name))) < len(chain_parts(name))]
        if repeated:
            raise ValueError(f"{repeated[0]!r} names a strategy twice; a chain names each strategy once")
        if not value:
            raise ValueError("name at least one strategy")
        return value

    @field_validator("layer")
    @classmethod
    def _layer(cls, value: str) -> str:
        value = value.strip()
        if value in ("auto", "gates") or depth_fraction(value) is not None:
            return value
        if not all(part.strip().isdigit() for part in value.split(",")):
            raise ValueError(
                "use a layer number, a comma-separated list of layers, a depth fraction such as 0.75, auto, or "
                "gates"
            )
        return value

    @model_validator(mode="after")
    def _gates_layer_needs_gates(self) -> ApplyOptions:
        if self.layer == "gates" and not self.detector_gate:
            raise ValueError("--layer gates edits the layers of the --detector-gate files; name them")
        return self

    @model_validator(mode="before")
    @classmethod
    def _candidates_mean_auto(cls, data: Any) -> Any:
        # Naming candidate layers asks for the dev-split choice among them, unless a layer is named too.
        if isinstance(data, dict) and data.get("candidate_layers") and data.get("layer") is None:
            return {**data, "layer": "auto"}
        return data

    @model_validator(mode="before")
    @classmethod
    def _gates_mean_the_gate_edit(cls, data: Any) -> Any:
        # Naming gates asks for the edit measured with them (docs/results/gates.md) unless a setting is named.
        if not isinstance(data, dict) or not data.get("detector_gate"):
            return data
        gates = data["detector_gate"]
        implied = cls.implied_by_gates(1 if isinstance(gates, str | Path) else len(gates))
        if data.get("detector_response", "step") != "step":
            del implied["detector_push_at"]  # the square response has no up row to place the push with
        if data.get("detector_push_at", implied.get("detector_push_at")) != "prompt-end":
            implied.pop("harmless_reply_tokens", None)  # only the prompt-end fit reads the harmless replies
        return {**implied, **data}

    @classmethod
    def implied_by_gates(cls, count: int) -> dict[str, Any]:
        """The settings naming ``count`` gates implies (GATE_EDIT and its gain)."""
        return {**GATE_EDIT, "gain": GATE_GAIN * count}

    def fixed_layers(self, num_layers: int) -> tuple[int, ...] | None:
        """The layers ``--layer`` names for a model of ``num_layers`` layers; None for auto and for gates (the
        gates' files name them: ``plan.layer_sets``)."""
        if self.layer in ("auto", "gates"):
            return None
        fraction = depth_fraction(self.layer)
        if fraction is not None:
            return (min(round(fraction * num_layers), num_layers - 1),)
        return tuple(int(part) for part in self.layer.split(","))


def depth_fraction(value: str) -> float | None:
    """``0.75`` -> 0.75: a layer given as a fraction of the model's depth (0 < f < 1); None for anything else."""
    if "." not in value or "," in value:
        return None
    try:
        fraction = float(value)
    except ValueError:
        return None
    return fraction if 0 < fraction < 1 else None
