"""Tiny random checkpoints with a byte-level tokenizer, for tests and offline dry runs.

Nothing here downloads anything: configs are built in code and saved with ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

# A small chat template in the usual role-tag style; enough for apply_chat_template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<|marker|>"]
TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2")


def byte_tokenizer(chat_template: str | None = CHAT_TEMPLATE) -> Any:
    """A byte-level tokenizer (every UTF-8 byte is a token) that handles any language."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left"
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


def tiny_config(model_type: str, *, layers: int = 2, hidden: int = 32, mlp: int = 64, tied: bool = False) -> Any:
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        GemmaConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    vocab = 256 + len(SPECIAL_TOKENS)
    ids: dict[str, Any] = {
        "pad_token_id": 256,
        "bos_token_id": 257,
        "eos_token_id": 258,
        "tie_word_embeddings": tied,
    }
    common: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        **ids,
    }
    head_dim: dict[str, Any] = {"head_dim": hidden // 4}
    builders: dict[str, Any] = {
        "llama": lambda: LlamaConfig(**common),
        "mistral": lambda: MistralConfig(**common),
        "qwen2": lambda: Qwen2Config(**common),
        "qwen3": lambda: Qwen3Config(**common, **head_dim),
        "gemma": lambda: GemmaConfig(**common, **head_dim),
        "gemma2": lambda: Gemma2Config(**common, **head_dim),
        "gemma3_text": lambda: Gemma3TextConfig(**common, **head_dim),
        "phi3": lambda: Phi3Config(**common),
        "gpt2": lambda: GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_inner=mlp, n_layer=layers, n_head=4, n_positions=512, **ids
        ),
    }
    if model_type not in builders:
        raise ValueError(f"no tiny config for {model_type}; known: {', '.join(builders)}")
    return builders[model_type]()


def build_tiny_model(
    dest: str | Path,
    model_type: str = "llama",
    *,
    layers: int = 2,
    hidden: int = 32,
    mlp: int = 64,
    tied: bool = False,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    seed: int = 0,
) -> Path:
    """Save a random tiny model (and tokenizer) to ``dest``; returns the folder."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, layers=layers, hidden=hidden, mlp=mlp, tied=tied)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    dest = Path(dest)
    kwargs: dict[str, Any] = {}
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    model.save_pretrained(dest, **kwargs)
    byte_tokenizer().save_pretrained(dest)
    return dest


# llama.cpp's names for the tensors of a Llama/Qwen2-style model (no q/k permutation is needed for qwen2).
_GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _llama_permute(weight: Any, heads: int) -> Any:
    """llama.cpp's row order for a Llama q/k projection (rotary halves interleaved); transformers undoes it."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_tiny_gguf(hf_folder: str | Path, dest: str | Path, quantization: str = "F32") -> Path:
    """A GGUF file of a tiny llama or qwen2 model saved by ``build_tiny_model``, loadable by transformers.

    2-D weights whose rows fit the type's blocks are stored as ``quantization`` (F32, F16, Q8_0, ...);
    norms stay F32. The byte tokenizer is written as a GPT-2-style vocabulary with one merge.
    """
    import json

    import gguf
    import numpy as np
    from safetensors.torch import load_file

    folder, dest = Path(hf_folder), Path(dest)
    config = json.loads((folder / "config.json").read_text())
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = {**tokenizer["model"]["vocab"], **{t["content"]: t["id"] for t in tokenizer["added_tokens"]}}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    tokens[-1] = "Ġt"  # a merged token, so the merge list is not empty (the last special is unused)
    architecture = config["model_type"]
    if architecture not in ("llama", "qwen2"):
        raise ValueError(f"write_tiny_gguf writes llama and qwen2 models, not {architecture}")
    writer = gguf.GGUFWriter(str(dest), architecture)
    writer.add_name("tiny")
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_freq_base(config.get("rope_theta") or 10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * 256 + [3] * (len(tokens) - 257) + [1])
    writer.add_token_merges(["Ġ t"])
    writer.add_bos_token_id(config["bos_token_id"])
    writer.add_eos_token_id(config["eos_token_id"])
    writer.add_pad_token_id(config["pad_token_id"])
    kind = gguf.GGMLQuantizationType[quantization]
    block = gguf.GGML_QUANT_SIZES[kind][0]
    top = {
        "model.embed_tokens.weight": "token_embd",
        "model.norm.weight": "output_norm",
        "lm_head.weight": "output",
    }
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        parts = name.split(".")
        if name in top:
            target = f"{top[name]}.weight"
        else:
            target = f"blk.{parts[2]}.{_GGUF_NAMES['.'.join(parts[3:-1])]}.{parts[-1]}"  # weight or bias
        values = tensor.float().numpy()
        if architecture == "llama" and target.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config["num_attention_heads"] if "attn_q" in target else config["num_key_value_heads"]
            values = _llama_permute(values, heads)
        if values.ndim == 2 and values.shape[1] % block == 0 and quantization != "F32":
            data = values.astype(np.float16) if quantization == "F16" else gguf.quants.quantize(values, kind)
            writer.add_tensor(target, data, raw_shape=data.shape, raw_dtype=kind)
        else:
            writer.add_tensor(target, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest
