"""How a model is loaded and run: the settings every command shares."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from sparse_edit.options.base import Options
from sparse_edit.options.roles import MODEL, TEXT
from sparse_edit.options.traits import INHERITED, NOT_IN_REPLY_KEY

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class ModelOptions(Options):
    """How a model is loaded and run."""

    panel: ClassVar[str | None] = "model"

    model: Annotated[Path, MODEL, INHERITED] = Field(
        description="Model folder (Hugging Face layout with safetensors weights), a .gguf file, or zoo:NAME for a "
        "pinned offline model (zoo:smollm2-135m-instruct, zoo:qwen2.5-coder-0.5b-instruct, zoo:gemma-3-270m)."
    )
    device: Annotated[str, TEXT] = Field(
        "auto",
        description="auto, cpu, cuda, cuda:N or mps. auto uses CUDA when present (spread over all GPUs with "
        "accelerate's device_map), else MPS, else the CPU.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype. auto: float32 on the CPU, the checkpoint's dtype on a GPU."
    )
    batch_size: Annotated[int, NOT_IN_REPLY_KEY] = Field(
        8, ge=1, description="Prompts per forward pass; lower it if memory runs out."
    )
    max_length: Annotated[int | None, INHERITED] = Field(
        None,
        ge=8,
        description="Keep at most this many tokens per formatted prompt (the end is kept); counts are reported.",
    )
    system_prompt: Annotated[str | None, TEXT, INHERITED] = Field(
        None, description="System message for the chat template (default: whatever the template does on its own)."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError("use auto, cpu, cuda, cuda:N or mps")
        return value
