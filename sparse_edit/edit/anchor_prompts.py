"""The prompts of each anchor role, chosen from the prompt files before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass

from sparse_edit.data.prompts import Prompt


@dataclass
class AnchorPrompts:
    """The prompts of each role, chosen from the prompt files alone: every check on them runs before the model
    is loaded."""

    low_train: list[Prompt]
    ref_train: list[Prompt]
    safe_train: list[Prompt]
    ref_safe_train: list[Prompt]
    low_dev: list[Prompt]
    ref_dev: list[Prompt]
    safe_dev: list[Prompt]
