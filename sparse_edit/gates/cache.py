"""The feature cache: one forward pass per prompt, the MLP input at its last prompt token at chosen layers.

What a gate written into a neuron reads is exactly this state (the neuron's gate row times the MLP input),
so a gate is fitted, thresholded and screened on the cache, and a thousand candidates cost no forward pass.
The neuron also sees every other token: for harmless prompts the cache keeps a few earlier positions too
(``token_states``, the prompt's content and template tokens before the last), the rows a gate must stay
quiet on everywhere. One safetensors file: float32 tensors per layer, and in the header the prompts (id,
language, label, source, kind, text), which prompt each token row belongs to, and the model's fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparse_edit.console import Reporter
from sparse_edit.data.prompts import Prompt
from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import FEATURES_KIND, META_KEY, checked_metadata
from sparse_edit.io.staging import atomic_write_bytes
from sparse_edit.model.loading import LoadedModel

SCHEMA_VERSION = 1
# The harmless "source" of the token rows once they are rows of their own (``with_token_rows``).
TOKEN_GROUP = "earlier tokens of harmless prompts"


@dataclass
class FeatureCache:
    layers: tuple[int, ...]
    states: dict[int, np.ndarray]  # layer -> float32 [prompts, d]
    prompts: list[Prompt]
    model_fingerprint: str
    # Earlier positions of harmless prompts: layer -> float32 [token rows, d], and each row's prompt index.
    token_states: dict[int, np.ndarray] = field(default_factory=dict)
    token_owner: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

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

    def token_rows(self, layer: int) -> np.ndarray:
        """[token rows, d] float64: harmless prompts' earlier positions (empty when none were kept)."""
        if layer not in self.token_states:
            return np.zeros((0, self.states[layer].shape[1]))
        return self.token_states[layer].astype(np.float64)

    def with_token_rows(self) -> FeatureCache:
        """The cache with every token row as a prompt of its own: harmless, its prompt's id and language, source
        ``TOKEN_GROUP``. Fitted on this, a gate learns to stay quiet on earlier positions, and its thresholds keep
        their firing under the limit like any harmless source's (folds follow the prompt's id)."""
        if not len(self.token_owner):
            return self
        extra = [
            Prompt(self.prompts[i].id, self.prompts[i].lang, "", "harmless", source=TOKEN_GROUP)
            for i in self.token_owner
        ]
        states = {layer: np.concatenate([self.states[layer], self.token_states[layer]]) for layer in self.layers}
        return FeatureCache(self.layers, states, self.prompts + extra, self.model_fingerprint)

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
        tensors.update(
            {
                f"tokens.{layer}": torch.from_numpy(np.ascontiguousarray(rows))
                for layer, rows in self.token_states.items()
            }
        )
        if len(self.token_owner):
            tensors["token_owner"] = torch.from_numpy(np.ascontiguousarray(self.token_owner.astype(np.int64)))
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
        token_states = {
            layer: tensors[f"tokens.{layer}"].numpy() for layer in layers if f"tokens.{layer}" in tensors
        }
        owner = tensors["token_owner"].numpy() if "token_owner" in tensors else np.zeros(0, dtype=np.int64)
        if any(len(rows) != len(owner) for rows in token_states.values()) or (
            len(owner) and owner.max() >= len(prompts)
        ):
            raise SparseEditError(f"{flag} {path}: the token rows do not match their prompts")
        return cls(layers, states, prompts, str(meta["model_fingerprint"]), token_states, owner)

    def describe(self) -> dict[str, Any]:
        harmful = self.harmful
        return {
            "prompts": len(self),
            "harmful": int(harmful.sum()),
            "harmless": int((~harmful).sum()),
            "languages": sorted(set(self.langs)),
            "layers": list(self.layers),
            "token_rows": len(self.token_owner),
        }


# Earlier positions kept per harmless prompt: every third token back from the last, skipping the last.
TOKEN_OFFSETS = (4, 7, 10, 13)


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
    """One forward pass per prompt (stopping after the deepest layer read): the MLP input at the last token,
    and for harmless prompts at ``TOKEN_OFFSETS`` positions before it (those inside the prompt)."""
    from sparse_edit.model.batching import encode_prompts
    from sparse_edit.model.features import FeatureRequest, collect

    encoded = encode_prompts(loaded.tokenizer, list(prompts), system_prompt, max_length)
    # Longest first: batches of like lengths waste little on padding.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
    tail = max(TOKEN_OFFSETS) + 1
    request = FeatureRequest(layers=list(layers), sites=("mlp_input",), positions=tail)
    features = collect(loaded, [encoded[i] for i in order], request, batch_size, reporter, label)
    back = np.argsort(np.asarray(order))
    states, token_states = {}, {}
    owners = [
        (i, offset)
        for i, item in enumerate(encoded)
        if item.prompt.label == "harmless"
        for offset in TOKEN_OFFSETS
        if offset < len(item.ids)
    ]
    for layer in layers:
        blocks = features.rows[("mlp_input", layer)].numpy().reshape(len(encoded), tail, -1)[back]
        states[layer] = np.ascontiguousarray(blocks[:, -1])
        token_states[layer] = (
            np.stack([blocks[i, -1 - offset] for i, offset in owners]) if owners else blocks[:0, 0]
        )
    owner = np.asarray([i for i, _ in owners], dtype=np.int64)
    return FeatureCache(tuple(layers), states, list(prompts), loaded.checkpoint.fingerprint(), token_states, owner)
