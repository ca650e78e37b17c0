"""The feature cache: one forward pass per prompt, the MLP input at its last prompt token at chosen layers.

What a gate written into a neuron reads is exactly this state (the neuron's gate row times the MLP input),
so a gate is fitted, thresholded and screened on the cache, and a thousand candidates cost no forward pass.
One safetensors file: a float32 [prompts, d] tensor per layer, and in the header the prompts (id, language,
label, group, text) and the model's fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import FEATURES_KIND, META_KEY, checked_metadata
from sparse_edit.io.outputs import atomic_write_bytes
from sparse_edit.model.loading import LoadedModel

SCHEMA_VERSION = 1


@dataclass
class FeatureCache:
    layers: tuple[int, ...]
    states: dict[int, np.ndarray]  # layer -> float32 [prompts, d]
    prompts: list[Prompt]
    model_fingerprint: str

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def harmful(self) -> np.ndarray:
        return np.asarray([p.label == "harmful" for p in self.prompts])

    @property
    def langs(self) -> list[str]:
        return [p.lang for p in self.prompts]

    @property
    def groups(self) -> list[str]:
        return [p.group for p in self.prompts]

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.prompts]

    def rows(self, layer: int) -> np.ndarray:
        if layer not in self.states:
            raise SparseEditError(f"layer {layer} is not in the feature cache (it holds {list(self.layers)})")
        return self.states[layer].astype(np.float64)

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        meta = {
            "kind": FEATURES_KIND,
            "schema_version": SCHEMA_VERSION,
            "layers": list(self.layers),
            "model_fingerprint": self.model_fingerprint,
            "prompts": [[p.id, p.lang, p.label, p.source, p.kind, p.text] for p in self.prompts],
        }
        tensors = {
            f"layer.{layer}": torch.from_numpy(np.ascontiguousarray(self.states[layer])) for layer in self.layers
        }
        return save(tensors, metadata={META_KEY: json.dumps(meta, ensure_ascii=False)})

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_bytes())

    @classmethod
    def load(cls, path: Path, flag: str = "--features") -> FeatureCache:
        from safetensors.torch import load_file

        meta = checked_metadata(Path(path), FEATURES_KIND, SCHEMA_VERSION, flag, "feature cache")
        tensors = load_file(str(path))
        layers = tuple(int(layer) for layer in meta["layers"])
        missing = [layer for layer in layers if f"layer.{layer}" not in tensors]
        if missing:
            raise SparseEditError(f"{flag} {path}: the tensors of layers {missing} are missing")
        prompts = [
            Prompt(id=row[0], lang=row[1], label=row[2], source=row[3], kind=row[4], text=row[5])
            for row in meta["prompts"]
        ]
        states = {layer: tensors[f"layer.{layer}"].numpy() for layer in layers}
        if any(len(rows) != len(prompts) for rows in states.values()):
            raise SparseEditError(f"{flag} {path}: a layer's rows do not match the prompt list")
        return cls(layers, states, prompts, str(meta["model_fingerprint"]))

    def describe(self) -> dict[str, Any]:
        harmful = self.harmful
        return {
            "prompts": len(self),
            "harmful": int(harmful.sum()),
            "harmless": int((~harmful).sum()),
            "languages": sorted(set(self.langs)),
            "layers": list(self.layers),
        }


def collect_cache(
    loaded: LoadedModel,
    prompts: Sequence[Prompt],
    layers: Sequence[int],
    batch_size: int,
    reporter: Reporter,
    label: str,
    system_prompt: str | None = None,
    max_length: int | None = None,
) -> FeatureCache:
    """One forward pass per prompt (stopping after the deepest layer read): the MLP input at the last token."""
    from sparse_edit.model.batching import encode_prompts
    from sparse_edit.model.features import FeatureRequest, collect

    encoded = encode_prompts(loaded.tokenizer, list(prompts), system_prompt, max_length)
    # Longest first: batches of like lengths waste little on padding.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    request = FeatureRequest(layers=list(layers), sites=("mlp_input",), positions=1)
    features = collect(loaded, [encoded[i] for i in order], request, batch_size, reporter, label)
    back = np.argsort(np.asarray(order))
    states = {layer: features.rows[("mlp_input", layer)].numpy()[back] for layer in layers}
    return FeatureCache(tuple(layers), states, list(prompts), loaded.checkpoint.fingerprint())
