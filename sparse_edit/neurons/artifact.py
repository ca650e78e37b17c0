"""The locate artifact: one safetensors file with tensors and schema-versioned JSON metadata.

Tensors: ``neurons.<lang>.<layer>`` (int64 indices), ``stats.<lang>.<class>.mean|var`` and
``scores.<lang>.gap|z|d`` ([layers, mlp_width] float32). Metadata key ``sparse_edit`` holds
a JSON object with the model fingerprint, settings, source hashes and per-layer summaries.
No pickle is involved in either direction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.layout import LOCATE_KIND as KIND
from sparse_edit.io.layout import META_KEY, read_metadata
from sparse_edit.io.staging import atomic_write_bytes
from sparse_edit.neurons.scores import ClassStats, Scores, jaccard
from sparse_edit.version import __version__

SCHEMA_VERSION = 1


# What an artifact's recorded weights say about a checkpoint (written to the manifest as artifact.weights_check).
WeightsCheck = Literal["matched", "other weights", "overridden", "not recorded"]


def weights_check(model: dict[str, Any], checkpoint: Checkpoint, allow_other_weights: bool) -> WeightsCheck:
    """Whether ``checkpoint`` holds the weights an artifact's ``model`` record was measured on."""
    recorded = model.get("weights_sha256")
    if not isinstance(recorded, str):
        return "not recorded"
    if recorded == checkpoint.weights_sha256():
        return "matched"
    return "overridden" if allow_other_weights else "other weights"


def is_locate_artifact(path: Path) -> bool:
    meta = read_metadata(path)
    return bool(meta and meta.get("kind") == KIND)


@dataclass
class LocateArtifact:
    """Safety-neuron sets and statistics for one model, per language and layer."""

    model: dict[str, Any]
    settings: dict[str, Any]
    sources: list[dict[str, Any]]
    reference_lang: str
    languages: list[str]
    num_layers: int
    mlp_width: int
    counts: dict[str, dict[str, int]]
    neurons: dict[str, list[torch.Tensor]]
    stats: dict[str, dict[str, ClassStats]]
    scores: dict[str, Scores]
    recommended_layer: int | None
    recommended_rule: str
    tool_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    # The file this artifact was read from or last written to (None: in memory only); not part of the artifact.
    path: Path | None = field(default=None, compare=False, repr=False)

    # ---- derived views -------------------------------------------------------------
    def set_sizes(self) -> dict[str, list[int]]:
        return {lang: [int(index.numel()) for index in self.neurons[lang]] for lang in self.languages}

    def jaccard_to_reference(self) -> dict[str, list[float]]:
        ref = self.neurons[self.reference_lang]
        return {
            lang: [round(jaccard(ref[layer], self.neurons[lang][layer]), 4) for layer in range(self.num_layers)]
            for lang in self.languages
            if lang != self.reference_lang
        }

    def neuron_set(self, lang: str, layer: int) -> torch.Tensor:
        if lang not in self.neurons:
            raise SparseEditError(f"artifact has no language {lang!r}; it has {', '.join(self.languages)}")
        if not 0 <= layer < self.num_layers:
            raise SparseEditError(f"--layer {layer}: the model has layers 0..{self.num_layers - 1}")
        return self.neurons[lang][layer]

    def check_model(self, checkpoint: Checkpoint, where: str, allow_other_weights: bool = False) -> list[str]:
        """Refuse a different architecture, and other weights of the same shapes unless ``allow_other_weights``;
        return warnings for what cannot be checked or was let through."""
        if checkpoint.structure() != self.model["structure"]:
            raise SparseEditError(
                f"{where}: artifact was made for {self.model['structure']}, but {checkpoint.path} is "
                f"{checkpoint.structure()}; run locate on this model"
            )
        state = weights_check(self.model, checkpoint, allow_other_weights)
        if state == "not recorded":
            return [
                f"{where}: the artifact predates weight hashes, so it cannot be checked against {checkpoint.path}'s "
                "weights; run locate again to record them"
            ]
        if state == "other weights":
            raise SparseEditError(
                f"{where}: measured on the weights of {self.model['path']} (sha256 "
                f"{self.model['weights_sha256'][:12]}), but {checkpoint.path} holds other weights (sha256 "
                f"{checkpoint.weights_sha256()[:12]}); its neurons belong to the weights they were measured on, so "
                "run locate on this model (or pass --allow-other-weights if you mean it)"
            )
        if state == "overridden":
            return [f"{where}: applied to other weights than it was measured on (--allow-other-weights)"]
        return []

    def summary(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "model": self.model["path"],
            "model_type": self.model["structure"]["model_type"],
            "reference_lang": self.reference_lang,
            "languages": self.languages,
            "pooling": self.settings.get("pooling"),
            "prompts": self.counts,
            "neurons_per_layer": self.set_sizes(),
            "jaccard_to_reference": self.jaccard_to_reference(),
            "recommended_layer": self.recommended_layer,
            "recommended_rule": self.recommended_rule,
        }

    # ---- (de)serialisation ---------------------------------------------------------
    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors: dict[str, torch.Tensor] = {}
        for lang in self.languages:
            for layer, index in enumerate(self.neurons[lang]):
                tensors[f"neurons.{lang}.{layer}"] = index.to(torch.int64).contiguous()
            for label, stats in self.stats[lang].items():
                tensors[f"stats.{lang}.{label}.mean"] = stats.mean.to(torch.float32).contiguous()
                tensors[f"stats.{lang}.{label}.var"] = stats.var.to(torch.float32).contiguous()
            scores = self.scores[lang]
            for name in ("gap", "z", "d"):
                tensors[f"scores.{lang}.{name}"] = getattr(scores, name).to(torch.float32).contiguous()
        meta = {
            "kind": KIND,
            "schema_version": SCHEMA_VERSION,
            "tool_version": self.tool_version,
            "model": self.model,
            "settings": self.settings,
            "sources": self.sources,
            "reference_lang": self.reference_lang,
            "languages": self.languages,
            "num_layers": self.num_layers,
            "mlp_width": self.mlp_width,
            "counts": self.counts,
            "recommended_layer": self.recommended_layer,
            "recommended_rule": self.recommended_rule,
            "summary": {
                "neurons_per_layer": self.set_sizes(),
                "jaccard_to_reference": self.jaccard_to_reference(),
            },
            "extra": self.extra,
        }
        return save(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), self.to_bytes())
        self.path = Path(path)

    @classmethod
    def load(cls, path: Path) -> LocateArtifact:
        path = Path(path)
        meta = read_artifact_metadata(path)
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise SparseEditError(f"{path}: tensors cannot be read ({exc})") from None
        languages: list[str] = meta["languages"]
        num_layers, width = meta["num_layers"], meta["mlp_width"]

        def tensor(name: str, shape: tuple[int, ...] | None = None) -> torch.Tensor:
            return _checked_tensor(path, tensors, name, shape)

        def neuron_index(lang: str, layer: int) -> torch.Tensor:
            return _checked_index(path, tensor(f"neurons.{lang}.{layer}"), f"neurons.{lang}.{layer}", width)

        grid = (num_layers, width)
        neurons = {lang: [neuron_index(lang, layer) for layer in range(num_layers)] for lang in languages}
        stats = {
            lang: {
                label: ClassStats(
                    int(meta["counts"][lang][label]),
                    tensor(f"stats.{lang}.{label}.mean", grid),
                    tensor(f"stats.{lang}.{label}.var", grid),
                )
                for label in ("harmful", "harmless")
            }
            for lang in languages
        }
        scores = {
            lang: Scores(*(tensor(f"scores.{lang}.{name}", grid) for name in ("gap", "z", "d")))
            for lang in languages
        }
        return cls(
            model=meta["model"],
            settings=meta["settings"],
            sources=meta["sources"],
            reference_lang=meta["reference_lang"],
            languages=languages,
            num_layers=num_layers,
            mlp_width=width,
            counts=meta["counts"],
            neurons=neurons,
            stats=stats,
            scores=scores,
            recommended_layer=meta["recommended_layer"],
            recommended_rule=meta["recommended_rule"],
            tool_version=meta["tool_version"],
            extra=meta.get("extra", {}),
            path=path,
        )


def _checked_tensor(
    path: Path, tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...] | None
) -> torch.Tensor:
    """An artifact tensor that is present, of the expected shape, and finite."""
    value = tensors.get(name)
    if value is None:
        raise SparseEditError(f"{path}: tensor {name} is missing; the artifact is damaged, run locate again")
    if shape is not None and tuple(value.shape) != shape:
        raise SparseEditError(f"{path}: tensor {name} is {list(value.shape)}, expected {list(shape)}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise SparseEditError(f"{path}: tensor {name} holds NaN or infinite values")
    return value


def _checked_index(path: Path, index: torch.Tensor, name: str, width: int) -> torch.Tensor:
    """A neuron set: distinct integer indices inside the MLP width."""
    if index.dim() != 1 or index.is_floating_point():
        raise SparseEditError(f"{path}: tensor {name} is not a list of neuron indices")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= width):
        raise SparseEditError(f"{path}: tensor {name} has neuron indices outside 0..{width - 1}")
    if index.unique().numel() != index.numel():
        raise SparseEditError(f"{path}: tensor {name} lists a neuron twice")
    return index


# The metadata fields load() reads, with the JSON types they must have.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": dict,
    "settings": dict,
    "sources": list,
    "reference_lang": str,
    "languages": list,
    "num_layers": int,
    "mlp_width": int,
    "counts": dict,
    "recommended_layer": (int, type(None)),
    "recommended_rule": str,
    "tool_version": str,
}


def read_artifact_metadata(path: Path, flag: str = "") -> dict[str, Any]:
    """The validated metadata of a locate artifact; every problem is named with the path."""
    where = f"{flag} {path}".strip()
    if not path.is_file():
        raise SparseEditError(f"{where}: no such artifact file; run sparse-edit locate first")
    meta = read_metadata(path)
    if not meta or meta.get("kind") != KIND:
        raise SparseEditError(f"{where}: not a sparse-edit locate artifact (no {KIND} metadata)")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise SparseEditError(
            f"{where}: artifact schema {meta.get('schema_version')} is not supported (expected {SCHEMA_VERSION}); "
            "re-run locate with this version"
        )
    for name, kind in _FIELD_TYPES.items():
        if not isinstance(meta.get(name), kind) or isinstance(meta.get(name), bool):
            raise SparseEditError(f"{where}: metadata field {name!r} is missing or of the wrong type")
    languages, counts = meta["languages"], meta["counts"]
    if not languages or not all(isinstance(lang, str) for lang in languages):
        raise SparseEditError(f"{where}: metadata field 'languages' is not a list of language codes")
    if meta["num_layers"] < 1 or meta["mlp_width"] < 1:
        raise SparseEditError(f"{where}: metadata says the model has no layers or no MLP neurons")
    for lang in languages:
        row = counts.get(lang)
        if not isinstance(row, dict) or not all(
            isinstance(row.get(label), int) for label in ("harmful", "harmless")
        ):
            raise SparseEditError(f"{where}: metadata field 'counts' has no harmful/harmless counts for {lang}")
    structure = meta["model"].get("structure")
    if not isinstance(structure, dict) or not isinstance(meta["model"].get("fingerprint"), str):
        raise SparseEditError(f"{where}: metadata field 'model' lacks the model's structure and fingerprint")
    return meta
