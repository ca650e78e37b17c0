"""``sparse-edit eval``'s settings."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from sparse_edit.options.model import ModelOptions
from sparse_edit.options.prompts import PromptOptions
from sparse_edit.options.roles import JUDGE, MODEL, READ, READ_WRITTEN, TEXT, WRITTEN
from sparse_edit.options.traits import NOT_IN_REPLY_KEY, ShortFlag


class EvalOptions(ModelOptions, PromptOptions):
    """``sparse-edit eval``: per-language attack success, over-refusal, utility and representation report."""

    base: Annotated[Path | None, MODEL] = Field(
        None, description="The unedited model, for before/after differences, McNemar tests and KL."
    )
    output: Annotated[Path, WRITTEN, ShortFlag("-o"), NOT_IN_REPLY_KEY] = Field(
        description="Folder for report.json, report.md and charts (written atomically)."
    )
    overwrite: Annotated[bool, NOT_IN_REPLY_KEY] = Field(False, description="Replace an existing report folder.")
    max_new_tokens: int = Field(
        128, ge=1, description="Tokens generated per reply (short replies hide late refusals)."
    )
    judge: Annotated[str, JUDGE, NOT_IN_REPLY_KEY] = Field(
        "keyword", description="keyword (marker lists per language) or the path of a local guard model folder."
    )
    artifact: Annotated[Path | None, READ, NOT_IN_REPLY_KEY] = Field(
        None, description="Locate artifact: adds the Jaccard heatmap and neuron counts."
    )
    fail_if: Annotated[list[str], TEXT, NOT_IN_REPLY_KEY] = Field(
        default_factory=list,
        description="Gate expressions for CI, e.g. 'asr[bn] > 0.30', 'kl_harmless > 0.05'; any true gate exits 1.",
    )
    representation: Annotated[bool, NOT_IN_REPLY_KEY] = Field(
        True, description="Also measure harmful/harmless separation of hidden states per language and layer."
    )
    reuse_base_replies: Annotated[bool, NOT_IN_REPLY_KEY] = Field(
        False,
        description="With --base: find the edited model's greedy replies from the base model's, checking each "
        "in one teacher-forced pass and generating only from where the edited model diverges. It saves time "
        "only when the edit leaves most replies unchanged, and in bfloat16 a reply can differ as it does between "
        "two batch sizes (docs/method.md, incremental replies).",
    )
    base_cache: Annotated[Path | None, READ_WRITTEN, NOT_IN_REPLY_KEY] = Field(
        None,
        description="With --base: a folder that keeps the base model's replies across eval runs, one file per "
        "base model and generation settings (weights' sha256, dtype, device, tokens, template). A later eval "
        "against the same base with the same settings reuses the replies it finds there instead of "
        "generating them again; replies of other settings are never mixed in.",
    )
    seed: int = Field(0, description="Torch seed (generation is greedy; recorded for reproducibility).")

    @model_validator(mode="after")
    def _cache_needs_base(self) -> EvalOptions:
        if self.base_cache is not None and self.base is None:
            raise ValueError("--base-cache keeps the base model's replies: give --base too, or drop --base-cache")
        return self
