"""Everything sparse-edit knows about model architectures, in one table.

A neuron ``j`` of a layer's MLP is the ``j``-th entry of the activation that enters the MLP
output projection (``down_proj`` / GPT-2 ``c_proj``). Its *input weights* are the slice of
the input projection(s) that produces it, and its *output weights* the slice of the output
projection that reads it. ``NeuronSlice`` says where that slice lives on disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from sparse_edit.errors import SparseEditError

Projection = Literal["gate", "up", "down"]


@dataclass(frozen=True)
class NeuronSlice:
    """Where neuron ``j``'s weights of one projection live in a checkpoint tensor.

    The neuron's weight vector is ``tensor.select(axis, offset + j)``.
    """

    tensor: str
    axis: int
    offset: int = 0

    def read(self, weight: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        """Neuron-major block ``[len(neurons), other_dim]`` of ``weight``."""
        block = weight.index_select(self.axis, neurons + self.offset)
        return block if self.axis == 0 else block.T

    def write(self, weight: torch.Tensor, neurons: torch.Tensor, block: torch.Tensor) -> None:
        """Write a neuron-major block back into ``weight`` in place."""
        index = neurons + self.offset
        if self.axis == 0:
            weight[index] = block.to(weight.dtype)
        else:
            weight[:, index] = block.T.to(weight.dtype)


@dataclass(frozen=True)
class Family:
    """One architecture family: module paths, tensor names and weight orientation."""

    name: str
    model_types: tuple[str, ...]
    # Dotted path, from the *CausalLM module, of the list of decoder layers.
    layers_path: str
    # Tensor-name prefix of layer i on disk ("{prefix}.{i}.").
    tensor_prefix: str
    # Name of the MLP module inside a decoder layer; its forward input is the MLP input x.
    mlp_attr: str
    # Name of the output projection inside the MLP; its forward input is the neuron activation.
    out_proj_attr: str
    # "linear": input projection weight [d_ff, d]; "conv1d": [d, d_ff]; "fused_gate_up": [2 d_ff, d].
    in_layout: Literal["linear", "conv1d", "fused_gate_up"]
    gate_name: str
    up_name: str | None
    out_name: str
    gated: bool

    def layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        module: Any = model
        for part in self.layers_path.split("."):
            module = getattr(module, part)
        if not isinstance(module, torch.nn.ModuleList):
            raise SparseEditError(f"{self.name}: {self.layers_path} is not a list of layers in this model")
        return module

    def mlp(self, model: torch.nn.Module, layer: int) -> torch.nn.Module:
        return getattr(self.layers(model)[layer], self.mlp_attr)

    def out_proj(self, model: torch.nn.Module, layer: int) -> torch.nn.Module:
        return getattr(self.mlp(model, layer), self.out_proj_attr)

    def gguf_name(self, tensor: str) -> str | None:
        """The llama.cpp (GGUF) name of an MLP projection weight, for families whose GGUF layout
        stores gate, up and down as separate ``[rows, columns]`` tensors like ours; None otherwise."""
        if self.in_layout != "linear" or not self.gated:
            return None
        parts = tensor.split(".")
        prefix = self.tensor_prefix.split(".")
        names = {self.gate_name: "ffn_gate", self.up_name: "ffn_up", self.out_name: "ffn_down"}
        if parts[: len(prefix)] != prefix or parts[-1] != "weight" or len(parts) != len(prefix) + 4:
            return None
        layer, mlp, projection = parts[len(prefix)], parts[len(prefix) + 1], parts[len(prefix) + 2]
        if mlp != self.mlp_attr or projection not in names or not layer.isdigit():
            return None
        return f"blk.{layer}.{names[projection]}.weight"

    def neuron_slice(self, layer: int, projection: Projection, d_ff: int) -> NeuronSlice:
        """Where the neurons' weights of ``projection`` live for ``layer``."""
        prefix = f"{self.tensor_prefix}.{layer}.{self.mlp_attr}."
        if projection == "down":
            # Linear down_proj is [d, d_ff] (neuron = column); GPT-2 Conv1D c_proj is [d_ff, d].
            axis = 0 if self.in_layout == "conv1d" else 1
            return NeuronSlice(prefix + self.out_name + ".weight", axis=axis)
        if projection == "up":
            if not self.gated:
                raise SparseEditError(
                    f"{self.name} has no gated MLP, so there is no up projection to edit; use --proj gate"
                )
            if self.in_layout == "fused_gate_up":
                return NeuronSlice(prefix + self.gate_name + ".weight", axis=0, offset=d_ff)
            assert self.up_name is not None
            return NeuronSlice(prefix + self.up_name + ".weight", axis=0)
        axis = 1 if self.in_layout == "conv1d" else 0
        return NeuronSlice(prefix + self.gate_name + ".weight", axis=axis)


def _gated(name: str, *model_types: str) -> Family:
    return Family(
        name=name,
        model_types=model_types,
        layers_path="model.layers",
        tensor_prefix="model.layers",
        mlp_attr="mlp",
        out_proj_attr="down_proj",
        in_layout="linear",
        gate_name="gate_proj",
        up_name="up_proj",
        out_name="down_proj",
        gated=True,
    )


FAMILIES: tuple[Family, ...] = (
    _gated("llama", "llama"),
    _gated("mistral", "mistral"),
    _gated("qwen2", "qwen2"),
    _gated("qwen3", "qwen3"),
    _gated("gemma", "gemma"),
    _gated("gemma2", "gemma2"),
    _gated("gemma3-text", "gemma3_text"),
    Family(
        name="phi3",
        model_types=("phi3",),
        layers_path="model.layers",
        tensor_prefix="model.layers",
        mlp_attr="mlp",
        out_proj_attr="down_proj",
        in_layout="fused_gate_up",
        gate_name="gate_up_proj",
        up_name=None,
        out_name="down_proj",
        gated=True,
    ),
    Family(
        name="gpt2",
        model_types=("gpt2",),
        layers_path="transformer.h",
        tensor_prefix="transformer.h",
        mlp_attr="mlp",
        out_proj_attr="c_proj",
        in_layout="conv1d",
        gate_name="c_fc",
        up_name=None,
        out_name="c_proj",
        gated=False,
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for family in FAMILIES for t in family.model_types)


def family_for_model_type(model_type: str | None, where: str = "config.json") -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise SparseEditError(
        f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
    )


@dataclass(frozen=True)
class Dimensions:
    num_layers: int
    hidden_size: int
    mlp_width: int


def dimensions(config: Mapping[str, Any], where: str = "config.json") -> Dimensions:
    """Layer count, hidden size and MLP width from a raw ``config.json`` mapping."""

    def first(*keys: str) -> Any:
        for key in keys:
            if config.get(key) is not None:
                return config[key]
        return None

    layers = first("num_hidden_layers", "n_layer")
    hidden = first("hidden_size", "n_embd")
    width = first("intermediate_size", "n_inner")
    if width is None and config.get("model_type") == "gpt2" and hidden is not None:
        width = 4 * int(hidden)  # GPT-2's documented default when n_inner is null
    if layers is None or hidden is None or width is None:
        raise SparseEditError(f"{where}: cannot read layer count, hidden size and MLP width from the config")
    return Dimensions(int(layers), int(hidden), int(width))


def gate_activation(
    config: Mapping[str, Any], where: str = "config.json"
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation a gated MLP applies to its gate projection, as transformers builds it from the config."""
    from transformers.activations import ACT2FN

    # Gemma names it hidden_activation (hidden_act is a legacy field there).
    name = config.get("hidden_activation") or config.get("hidden_act")
    if name is None and isinstance(config.get("text_config"), Mapping):
        name = config["text_config"].get("hidden_activation") or config["text_config"].get("hidden_act")
    if not isinstance(name, str) or name not in ACT2FN:
        raise SparseEditError(f"{where}: unknown MLP activation {name!r}; cannot model the edited neuron")
    activation: Callable[[torch.Tensor], torch.Tensor] = ACT2FN[name]
    return activation
