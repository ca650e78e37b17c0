"""Streaming float64 moments: count, sum and sum of squares per group and layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Moments:
    """Count, sum and sum of squares of per-prompt vectors, for G groups x L layers x D units."""

    count: torch.Tensor  # [G] float64
    total: torch.Tensor  # [G, L, D] float64
    squares: torch.Tensor  # [G, L, D] float64

    @classmethod
    def zeros(cls, groups: int, layers: int, width: int) -> Moments:
        return cls(
            torch.zeros(groups, dtype=torch.float64),
            torch.zeros(groups, layers, width, dtype=torch.float64),
            torch.zeros(groups, layers, width, dtype=torch.float64),
        )

    def add(self, layer: int, group_index: torch.Tensor, values: torch.Tensor) -> None:
        """Add rows ``values[B, D]`` of ``layer`` to the groups ``group_index[B]``."""
        values = values.to(torch.float64)
        self.total[:, layer].index_add_(0, group_index, values)
        self.squares[:, layer].index_add_(0, group_index, values * values)

    def count_rows(self, group_index: torch.Tensor) -> None:
        self.count.index_add_(0, group_index, torch.ones_like(group_index, dtype=torch.float64))

    def mean(self, group: int) -> torch.Tensor:
        return self.total[group] / self.count[group].clamp(min=1)

    def variance(self, group: int) -> torch.Tensor:
        """Unbiased variance [L, D]."""
        n = self.count[group]
        mean = self.mean(group)
        return ((self.squares[group] - n * mean * mean) / (n - 1).clamp(min=1)).clamp(min=0)
