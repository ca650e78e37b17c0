"""Validated options for every command: one typed field per setting, whose description is its --help.

A run can be described by a TOML file; command-line flags override it. Paths are relative
to the current directory.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sparse_edit.errors import SparseEditError

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def help(cls, field: str) -> str:
        description = cls.model_fields[field].description
        assert description, f"{cls.__name__}.{field} needs a description"
        return description


class ModelOptions(Options):
    """How a model is loaded and run."""

    model: Path = Field(description="Model folder (Hugging Face layout with safetensors weights) or a .gguf file.")
    device: str = Field(
        "auto",
        description="auto, cpu, cuda, cuda:N or mps. auto uses CUDA when present (spread over all GPUs with "
        "accelerate's device_map), else MPS, else the CPU.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype. auto: float32 on the CPU, the checkpoint's dtype on a GPU."
    )
    batch_size: int = Field(8, ge=1, description="Prompts per forward pass; lower it if memory runs out.")
    max_length: int | None = Field(
        None,
        ge=8,
        description="Keep at most this many tokens per formatted prompt (the end is kept); counts are reported.",
    )
    system_prompt: str | None = Field(
        None, description="System message for the chat template (default: whatever the template does on its own)."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps")
        return value


class PromptOptions(Options):
    harmful: list[str] = Field(
        min_length=1,
        description="Harmful prompt sources: files or glob patterns (.jsonl, .json per language, wide .csv); "
        "append :LANG to name a .json file's language or :en,th to pick .csv columns. Repeatable.",
    )
    harmless: list[str] = Field(min_length=1, description="Harmless prompt sources, same formats as --harmful.")
    reference_lang: str = Field("en", description="The high-resource language whose safety pattern is the target.")
    languages: list[str] | None = Field(
        None, description="Languages to use (default: every language found in the sources)."
    )
    limit: int | None = Field(None, ge=2, description="Use at most this many prompts per language and class.")


class LocateOptions(ModelOptions, PromptOptions):
    """``sparse-edit locate``: safety-neuron statistics and sets per language and layer."""

    output: Path = Field(description="Where to write the artifact (.safetensors).")
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
    def _output_suffix(cls, value: Path) -> Path:
        if value.suffix != ".safetensors":
            raise ValueError("the artifact is a .safetensors file; end the path in .safetensors")
        return value


T = TypeVar("T", bound=Options)


def load_options(model: type[T], config_file: Path | None, overrides: dict[str, Any]) -> T:
    """Merge a TOML file and command-line overrides into one validated options object."""
    values: dict[str, Any] = {}
    where = "command line"
    if config_file is not None:
        where = str(config_file)
        try:
            values = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SparseEditError(f"--config {config_file}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise SparseEditError(f"--config {config_file}: not valid TOML ({exc})") from exc
    values.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise SparseEditError(_describe(exc, model, where)) from None


def _describe(exc: ValidationError, model: type[Options], where: str) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    flag = "--" + key.split(".")[0].replace("_", "-")
    if error["type"] == "extra_forbidden":
        known = ", ".join(sorted(model.model_fields))
        return f"{where}: unknown setting {key!r}; known settings: {known}"
    if error["type"] == "missing":
        return f"{where}: {key} is required; set it in the config file or pass {flag}"
    return f"{where}: {key} ({flag}): {error['msg']}"
