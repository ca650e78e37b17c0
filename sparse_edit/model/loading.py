"""Loading a model for inference and turning prompts into left-padded, length-sorted batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparse_edit.architectures import Family
from sparse_edit.config import ModelOptions
from sparse_edit.data.prompts import Prompt
from sparse_edit.errors import SparseEditError
from sparse_edit.io.checkpoint import Checkpoint
from sparse_edit.io.integrity import check_finite

# Used when a tokenizer has no chat template (base models). Documented in the README.
PLAIN_TEMPLATE = "User: {text}\nAssistant:"
# Without --max-length, a formatted prompt longer than this is refused rather than run: the
# attention of one such prompt can need more memory than the machine has.
MAX_PROMPT_TOKENS = 8192


def resolve_device(spec: str) -> str:
    if spec == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SparseEditError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if ":" in spec and int(spec.split(":")[1]) >= torch.cuda.device_count():
            raise SparseEditError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise SparseEditError("--device mps: MPS is not available on this machine; use --device cpu")
    return spec


def resolve_dtype(spec: str, device: str, checkpoint: Checkpoint) -> torch.dtype:
    if spec != "auto":
        return getattr(torch, spec)
    if device == "cpu":
        return torch.float32
    stored = checkpoint.config.get("torch_dtype") or checkpoint.config.get("dtype") or "float32"
    return getattr(torch, str(stored), torch.float32)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    checkpoint: Checkpoint
    family: Family
    device: str

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def num_layers(self) -> int:
        return self.checkpoint.dims.num_layers


def load_model(options: ModelOptions, path: Path | None = None) -> LoadedModel:
    """Load the checkpoint at ``path`` (default: ``options.model``) for inference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sparse_edit.io.gguf import ensure_hf_folder

    folder = ensure_hf_folder(path or options.model)
    checkpoint = Checkpoint.open(folder)
    family = checkpoint.family
    checkpoint.check_complete()
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device, checkpoint)
    # Never the folder's own code: Checkpoint.open refuses an auto_map, and this makes sure.
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": False}
    if device == "cuda" and options.device == "auto":
        kwargs["device_map"] = "auto"  # accelerate spreads a large model over every visible GPU
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise SparseEditError(f"{folder}: transformers could not load it ({exc})".splitlines()[0]) from exc
    check_finite(model, str(folder))
    if "device_map" not in kwargs:
        model.to(torch.device(device))  # type: ignore[arg-type]  # transformers types .to() narrowly
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model, tokenizer, checkpoint, family, device)


def format_prompt(tokenizer: Any, text: str, system_prompt: str | None = None) -> tuple[str, bool]:
    """The prompt as the model sees it before its answer; returns (text, whether a template was used)."""
    if getattr(tokenizer, "chat_template", None):
        messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
        messages.append({"role": "user", "content": text})
        # enable_thinking is read by templates with a thinking mode and ignored by the rest.
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        return str(rendered), True
    prefix = "" if system_prompt is None else system_prompt + "\n"
    return prefix + PLAIN_TEMPLATE.format(text=text), False


@dataclass(frozen=True)
class Encoded:
    prompt: Prompt
    ids: tuple[int, ...]
    truncated: bool


def encode_prompts(
    tokenizer: Any, prompts: Sequence[Prompt], system_prompt: str | None = None, max_length: int | None = None
) -> list[Encoded]:
    encoded = []
    for prompt in prompts:
        text, templated = format_prompt(tokenizer, prompt.text, system_prompt)
        ids = list(tokenizer(text, add_special_tokens=not templated)["input_ids"])
        if max_length is None and len(ids) > MAX_PROMPT_TOKENS:
            raise SparseEditError(
                f"prompt {prompt.id} ({prompt.lang}) is {len(ids)} tokens long, over {MAX_PROMPT_TOKENS}; "
                "pass --max-length N to keep its last N tokens, or shorten it"
            )
        truncated = max_length is not None and len(ids) > max_length
        if max_length is not None and truncated:
            ids = ids[-max_length:]
        encoded.append(Encoded(prompt, tuple(ids), truncated))
    return encoded


@dataclass
class Batch:
    items: list[Encoded]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def model_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids.to(device),
            "attention_mask": self.attention_mask.to(device),
            "position_ids": self.position_ids.to(device),
        }


def make_batch(items: list[Encoded], pad_id: int) -> Batch:
    width = max(len(item.ids) for item in items)
    input_ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        input_ids[row, width - len(item.ids) :] = torch.tensor(item.ids, dtype=torch.long)
        mask[row, width - len(item.ids) :] = 1
    # Positions count real tokens only, so left padding does not shift them.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(items, input_ids, mask, position_ids)


def batches(encoded: Sequence[Encoded], batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Length-sorted batches (less padding); order inside the run is deterministic."""
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].ids), i))
    for start in range(0, len(order), batch_size):
        yield make_batch([encoded[i] for i in order[start : start + batch_size]], pad_id)


@contextmanager
def batch_memory_guard(batch_size: int) -> Iterator[None]:
    """Turn an out-of-memory error of one batch into a user error that suggests a smaller batch."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise SparseEditError(
            f"ran out of memory at --batch-size {batch_size}; try --batch-size {max(1, batch_size // 2)}"
        ) from exc
