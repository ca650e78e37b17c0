"""Safety-neuron scores and sets (method step 1), overlaps, and the recommended edit layer."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ClassStats:
    """Per-layer mean and unbiased variance [L, D] of one class, with its prompt count."""

    count: int
    mean: torch.Tensor
    var: torch.Tensor


@dataclass(frozen=True)
class Scores:
    gap: torch.Tensor  # [L, D] mean(harmful) - mean(harmless)
    z: torch.Tensor  # [L, D] z-score of gap across each layer's neurons
    d: torch.Tensor  # [L, D] Cohen's d


def score(harmful: ClassStats, harmless: ClassStats) -> Scores:
    gap = harmful.mean - harmless.mean
    spread = gap.std(dim=1, keepdim=True)
    z = torch.where(spread > 0, (gap - gap.mean(dim=1, keepdim=True)) / spread.clamp(min=1e-30), 0.0)
    dof = max(harmful.count + harmless.count - 2, 1)
    pooled = ((harmful.count - 1) * harmful.var + (harmless.count - 1) * harmless.var) / dof
    sd = pooled.sqrt()
    # A neuron with zero spread in both classes is either identical (d = 0) or perfectly separated.
    d = torch.where(sd > 0, gap / sd.clamp(min=1e-30), torch.where(gap == 0, 0.0, torch.sign(gap) * 1e6))
    return Scores(gap, z, d)


def select(scores: Scores, tau_mag: float, tau_stat: float, max_neurons: int | None) -> list[torch.Tensor]:
    """Per layer, sorted neuron indices of ``{z > tau_mag and gap > 0} | {d > tau_stat}``.

    With ``max_neurons``, the selected neurons with the largest Cohen's d are kept.
    """
    chosen = (scores.z > tau_mag) & (scores.gap > 0) | (scores.d > tau_stat)
    sets = []
    for layer in range(chosen.shape[0]):
        index = torch.nonzero(chosen[layer]).flatten()
        if max_neurons is not None and index.numel() > max_neurons:
            order = torch.argsort(scores.d[layer, index], descending=True, stable=True)
            index = index[order[:max_neurons]]
        sets.append(torch.sort(index).values.to(torch.int64))
    return sets


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    left, right = set(a.tolist()), set(b.tolist())
    union = left | right
    return len(left & right) / len(union) if union else 1.0


RECOMMENDED_LAYER_RULE = (
    "among layers from L/2 to L-2 whose reference-language set is non-empty, the one whose set has the "
    "largest mean Cohen's d (strongest harmful/harmless separation); apply --layer auto refines this by measurement"
)


def recommend_layer(reference_scores: Scores, reference_sets: list[torch.Tensor]) -> int | None:
    layers = len(reference_sets)
    candidates = [layer for layer in range(layers // 2, max(layers - 1, layers // 2 + 1)) if layer < layers]
    best, best_value = None, float("-inf")
    for layer in candidates:
        index = reference_sets[layer]
        if index.numel() == 0:
            continue
        value = float(reference_scores.d[layer, index].mean())
        if value > best_value:
            best, best_value = layer, value
    return best
