"""How far apart harmful and harmless prompts sit in the hidden states, per language and layer.

Two numbers per layer, from last-token hidden states: the distance between the class means
divided by the pooled spread (root of the mean per-class total variance), and the accuracy
of a ridge linear probe under k-fold cross-validation. Languages whose classes are poorly
separated tend to get weak safety behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sparse_edit.model.batching import Encoded, batches
from sparse_edit.model.loading import LoadedModel


def last_token_states(loaded: LoadedModel, encoded: Sequence[Encoded], batch_size: int) -> torch.Tensor:
    """[N, L, D] float32: the output of every decoder layer at the last prompt token (input order)."""
    position = {id(item): i for i, item in enumerate(encoded)}
    out: list[torch.Tensor | None] = [None] * len(encoded)
    with torch.inference_mode():
        for batch in batches(encoded, batch_size, int(loaded.tokenizer.pad_token_id)):
            result = loaded.model.base_model(
                **batch.model_inputs(loaded.input_device), output_hidden_states=True, use_cache=False
            )
            stacked = torch.stack([h[:, -1].float().cpu() for h in result.hidden_states[1:]], dim=1)
            for item, row in zip(batch.items, stacked, strict=True):
                out[position[id(item)]] = row
    return torch.stack([row for row in out if row is not None])


def separation(harmful: torch.Tensor, harmless: torch.Tensor) -> list[float]:
    """Per layer: ‖μ_h − μ_s‖ / sqrt((tr Σ_h + tr Σ_s) / 2)."""
    values = []
    for layer in range(harmful.shape[1]):
        a, b = harmful[:, layer].double(), harmless[:, layer].double()
        spread = ((a.var(0).sum() + b.var(0).sum()) / 2).sqrt()
        gap = (a.mean(0) - b.mean(0)).norm()
        values.append(float(gap / spread) if spread > 0 else 0.0)
    return values


def probe_accuracy(
    harmful: torch.Tensor, harmless: torch.Tensor, folds: int = 5, alpha: float = 1e-2
) -> list[float]:
    """Per layer: k-fold accuracy of a ridge classifier (dual form, standardised features)."""
    x_all = torch.cat([harmful, harmless]).double()
    y = torch.cat([torch.ones(len(harmful)), -torch.ones(len(harmless))]).double()
    n = len(y)
    folds = max(2, min(folds, n // 2))
    fold_of = torch.arange(n) % folds
    accuracies = []
    for layer in range(x_all.shape[1]):
        x = x_all[:, layer]
        correct = 0
        for fold in range(folds):
            train, test = fold_of != fold, fold_of == fold
            mean, std = x[train].mean(0), x[train].std(0).clamp(min=1e-8)
            xt, xv = (x[train] - mean) / std, (x[test] - mean) / std
            kernel = xt @ xt.T
            ridge = alpha * float(kernel.trace()) / max(len(xt), 1)
            dual = torch.linalg.solve(kernel + ridge * torch.eye(len(xt), dtype=kernel.dtype), y[train])
            predictions = torch.sign(xv @ (xt.T @ dual))
            correct += int((predictions == y[test]).sum())
        accuracies.append(correct / n)
    return accuracies
