"""What a strategy reads at one edit layer: a plain record, so strategies need not import the gatherer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerData:
    """Everything a strategy needs at one layer (rows are prompt-major, float32)."""

    low_rows: dict[str, torch.Tensor]  # site -> [N_low * k, D]
    ref_rows: dict[str, torch.Tensor]  # site -> [N_ref * k, D]
    pairs: tuple[list[int], list[int]]
    harmless_gram: dict[str, torch.Tensor]  # site -> [D, D] float64
    harmless_tokens: int
    ref_harmless_residual: torch.Tensor | None  # [M * k, d] for the refusal direction
    dev: LayerData | None = None
    harmless_rows: dict[str, torch.Tensor] = field(default_factory=dict)  # site -> [N_safe * k, D]
    harmless_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # site -> [D_full] float64, over tokens
    harmless_squares: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # site -> [D_full] float64, over tokens
    low_row_langs: tuple[str, ...] = ()  # the language of every low_rows row
