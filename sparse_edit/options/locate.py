"""``sparse-edit locate``'s settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from sparse_edit.options.model import ModelOptions
from sparse_edit.options.prompts import PromptOptions
from sparse_edit.options.roles import WRITTEN
from sparse_edit.options.traits import ShortFlag


class LocateOptions(ModelOptions, PromptOptions):
    """``sparse-edit locate``: safety-neuron statistics and sets per language and layer."""

    output: Annotated[Path | None, WRITTEN, ShortFlag("-o")] = Field(
        None, description="Where to write the artifact (.safetensors)."
    )
    overwrite: bool = Field(False, description="Replace an existing output.")
    pooling: Literal["last", "mean", "max"] = Field(
        "last", description="How a prompt's token activations become one vector: last prompt token, mean or max."
    )
    tau_mag: float = Field(2.0, gt=0, description="z-score threshold on the harmful-harmless mean gap (S_mag).")
    tau_stat: float = Field(1.0, gt=0, description="Cohen's d threshold (S_stat).")
    max_neurons: int | None = Field(
        None, ge=1, description="Keep at most this many neurons per language and layer (largest Cohen's d first)."
    )
    seed: int = Field(0, description="Random seed (recorded; locate itself is deterministic).")

    @field_validator("output")
    @classmethod
    def _output_suffix(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix != ".safetensors":
            raise ValueError("the artifact is a .safetensors file; end the path in .safetensors")
        return value
