"""``sparse-edit gates``'s settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from sparse_edit.options.model import ModelOptions
from sparse_edit.options.prompts import PromptOptions
from sparse_edit.options.roles import PROMPTS, READ, TEXT, WRITTEN
from sparse_edit.options.traits import COMMA_LIST, ShortFlag

ProbeForm = Literal["lda", "logistic"]


class GateOptions(ModelOptions, PromptOptions):
    """``sparse-edit gates``: cache the states a gate reads, report what a gate can do per layer and language,
    screen gate candidates on the cache and write the chosen gate."""

    output: Annotated[Path, WRITTEN, ShortFlag("-o")] = Field(
        description="Folder for features-anchor.safetensors (and features-test.safetensors), ceiling.json, "
        "ceiling.md, ceiling.png, screen.json and gate.safetensors (the chosen gate, for apply "
        "--detector-gate), written atomically."
    )
    overwrite: bool = Field(False, description="Replace an earlier gates folder.")
    test_harmful: Annotated[list[str] | None, PROMPTS] = Field(
        None,
        description="Held-out harmful prompt sources: the gates fitted on the anchors (--harmful, --harmless) "
        "are scored on them too, beside the anchors' out-of-fold figures. Never used for a choice.",
    )
    test_harmless: Annotated[list[str] | None, PROMPTS] = Field(
        None, description="Held-out harmless prompt sources (with --test-harmful)."
    )
    features: Annotated[Path | None, READ] = Field(
        None,
        description="An anchor feature cache an earlier gates run wrote (features-anchor.safetensors): no "
        "forward pass; its prompts and layers are used as they are.",
    )
    test_features: Annotated[Path | None, READ] = Field(
        None, description="A held-out feature cache an earlier gates run wrote (features-test.safetensors)."
    )
    layers: Annotated[list[int] | None, COMMA_LIST] = Field(
        None, description="Layers to cache and screen (default: every second layer from L/3 to L-2)."
    )
    probe: Annotated[list[ProbeForm], COMMA_LIST] = Field(
        default_factory=lambda: list[ProbeForm](["lda"]),
        description="Probe forms screened: lda (shrinkage discriminant, closed form, fast) and/or logistic "
        "(L2 logistic regression, slower).",
    )
    max_firing: float = Field(
        0.02,
        ge=0,
        le=1,
        description="The choice rule: every harmless source (and kind) may fire at most this share, out of fold "
        "on the anchors; of the gates that keep it, the one catching most non-reference harmful prompts wins.",
    )
    limit_exempt: Annotated[list[str] | None, TEXT, COMMA_LIST] = Field(
        None,
        description="Harmless groups (a source, or source/kind: any whose name contains one of these) left out of "
        "the --max-firing rule; their firing is still reported. What relaxing the limits only for the sources the "
        "report's 'What limits' table names would buy: a choice against their over-refusal, made in the open.",
    )
    folds: int = Field(5, ge=2, le=20, description="Folds for out-of-fold scores (a prompt id stays in one fold).")
    source_limit: int | None = Field(
        None,
        ge=2,
        description="Use at most this many prompts of each source, kind and language (anchors and held-out), so "
        "that one large source does not fill the cache.",
    )
    front_gates: int = Field(
        4,
        ge=0,
        description="Also write the gates of the screen's front that keep --max-firing, most caught first, up to "
        "this many, as front/gate-N.safetensors (N: the candidate's index in screen.json), for tune "
        "--candidate-gates to confirm on replies.",
    )
    heatmap: bool = Field(True, description="Draw ceiling.png (needs matplotlib, the plot extra).")

    @model_validator(mode="after")
    def _test_sets(self) -> GateOptions:
        if (self.test_harmful is None) != (self.test_harmless is None):
            raise ValueError("held-out prompts need both classes: give --test-harmful and --test-harmless")
        return self
