"""Write an edited checkpoint: only the shards that hold a replaced tensor are rewritten.

Everything goes into a staging folder beside the destination, which is renamed into place
only when complete, so an interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import torch

from sparse_edit.io.checkpoint import FOREIGN_WEIGHT_PATTERNS, INDEX_FILE, Checkpoint, read_header_bytes
from sparse_edit.io.destination import Command, check_output
from sparse_edit.io.layout import TOOL_DIR
from sparse_edit.io.staging import staged_folder


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _is_foreign_weight(path: Path) -> bool:
    return any(path.match(pattern) for pattern in FOREIGN_WEIGHT_PATTERNS)


def copy_support_files(
    source: Checkpoint,
    staging: Path,
    warn: Callable[[str], None] | None = None,
    exclude: Collection[str] = (),
) -> None:
    """Copy config, tokenizer, chat template, model card and other non-weight files."""
    weight_files = set(source.shards) | {INDEX_FILE} | set(exclude)
    skipped: list[str] = []
    for item in sorted(source.path.iterdir()):
        if item.name in weight_files or item.name == TOOL_DIR or item.name.startswith("."):
            continue
        if _is_foreign_weight(item):
            skipped.append(item.name)
            continue
        target = staging / item.name
        if item.is_dir():
            shutil.copytree(item, target, ignore=shutil.ignore_patterns(*FOREIGN_WEIGHT_PATTERNS))
        else:
            shutil.copy2(item, target)
    if skipped and warn is not None:
        warn(f"not copied (weights in another format would stay unedited): {', '.join(skipped)}")


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    # safetensors stores little-endian, row-major data; a uint8 view gives exactly those bytes.
    return tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()


def _aligned_header(header: dict[str, object]) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return raw + b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces


def patch_shard(src: Path, dst: Path, replacements: Mapping[str, torch.Tensor]) -> None:
    """Write ``src`` to ``dst`` with the bytes of ``replacements`` swapped in.

    Shapes and dtypes are unchanged, so every other tensor's bytes and offsets stay as they
    are: the data section is copied and only the replaced byte ranges are written. Memory use
    is the replaced tensors plus a copy buffer, whatever the shard size. The metadata keeps
    every original entry and gains ``format: pt``.
    """
    old_header = read_header_bytes(src)
    header = json.loads(old_header)
    metadata = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
    metadata["format"] = "pt"
    header["__metadata__"] = metadata
    new_header = _aligned_header(header)
    patches = []
    for name, tensor in replacements.items():
        begin, end = header[name]["data_offsets"]
        data = _tensor_bytes(tensor)
        if len(data) != end - begin:
            raise ValueError(f"replacement for {name} has {len(data)} bytes, the shard holds {end - begin}")
        patches.append((begin, data))
    old_start, new_start = 8 + len(old_header), 8 + len(new_header)
    if new_header == old_header:
        shutil.copyfile(src, dst)  # kernel-side copy where the filesystem offers one
    else:
        with src.open("rb") as inp, dst.open("wb") as out:
            out.write(struct.pack("<Q", len(new_header)) + new_header)
            inp.seek(old_start)
            shutil.copyfileobj(inp, out, 1 << 24)
    with dst.open("r+b") as out:
        for begin, data in patches:
            out.seek(new_start + begin)
            out.write(data)


def write_shards(source: Checkpoint, staging: Path, replacements: Mapping[str, torch.Tensor]) -> list[str]:
    """Write every shard into ``staging``; returns the shards that were rewritten."""
    for name, tensor in replacements.items():
        info = source.require(name)
        if tuple(tensor.shape) != info.shape or tensor.dtype != source.torch_dtype(name):
            raise ValueError(
                f"replacement for {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"checkpoint has {info.shape} {info.dtype}"
            )
    by_shard: dict[str, list[str]] = {}
    for name in replacements:
        by_shard.setdefault(source.tensors[name].shard, []).append(name)

    for shard in source.shards:
        if shard not in by_shard:
            _link_or_copy(source.path / shard, staging / shard)
            continue
        patch_shard(source.path / shard, staging / shard, {name: replacements[name] for name in by_shard[shard]})

    if source.index is not None:
        index = json.loads(json.dumps(source.index))
        index.setdefault("metadata", {})
        index["metadata"]["total_size"] = sum(info.nbytes for info in source.tensors.values())
        (staging / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return sorted(by_shard)


def write_checkpoint(
    source: Checkpoint,
    dest: str | Path,
    replacements: Mapping[str, torch.Tensor],
    *,
    command: Command,
    input_flag: str = "--model",
    overwrite: bool = False,
    extra_files: Mapping[str, bytes] | None = None,
    warn: Callable[[str], None] | None = None,
    exclude: Collection[str] = (),
) -> list[str]:
    """Write ``source`` with ``replacements`` to ``dest`` atomically.

    ``exclude`` names top-level files not to copy. ``extra_files`` maps paths relative to the output folder to their contents (manifest,
    delta, model card); they are written last and win over copied files of the same name.
    Returns the names of the rewritten shards.
    """
    dest = Path(dest)
    check_output(dest, command, [(input_flag, source.path)], overwrite)
    with staged_folder(dest, overwrite, command) as staging:
        copy_support_files(source, staging, warn, exclude)
        rewritten = write_shards(source, staging, replacements)
        for relative, content in (extra_files or {}).items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return rewritten
