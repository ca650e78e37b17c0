"""Write an edited checkpoint: only the shards that hold a replaced tensor are rewritten.

Everything goes into a staging folder beside the destination, which is renamed into place
only when complete, so an interrupted run never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sparse_edit.checkpoint.reader import FOREIGN_WEIGHT_PATTERNS, INDEX_FILE, Checkpoint
from sparse_edit.errors import SparseEditError

# Our own output folder inside an edited checkpoint; never carried over from an input.
TOOL_DIR = "sparse_edit"


def check_destination(source: Path, dest: Path, overwrite: bool, flag: str = "--output") -> None:
    """Refuse destinations that would clobber the input or an existing folder."""
    src, dst = source.resolve(), dest.resolve()
    if src == dst:
        raise SparseEditError(
            f"{flag} {dest}: is the input folder; the input is never modified, pick a new folder"
        )
    if src in dst.parents:
        raise SparseEditError(f"{flag} {dest}: lies inside the input folder; pick a folder outside it")
    if dst.exists() and not overwrite:
        raise SparseEditError(f"{flag} {dest}: already exists; pass --overwrite to replace it")
    if dst.exists() and not dst.is_dir():
        raise SparseEditError(f"{flag} {dest}: exists and is not a folder")


@contextlib.contextmanager
def staged_folder(dest: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``dest`` in one rename."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".staging", dir=dest.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dest.exists():
        if not overwrite:
            shutil.rmtree(staging, ignore_errors=True)
            raise SparseEditError(f"{dest}: appeared while writing; pass --overwrite to replace it")
        retired = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(retired)
        staging.rename(dest)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(dest)


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
        # One shard in memory at a time keeps peak memory near the largest shard.
        tensors = load_file(str(source.path / shard))
        for name in by_shard[shard]:
            tensors[name] = replacements[name].detach().to("cpu").contiguous()
        metadata = {str(k): str(v) for k, v in source.shard_metadata.get(shard, {}).items()}
        metadata["format"] = "pt"
        save_file(tensors, str(staging / shard), metadata=metadata)
        del tensors

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
    check_destination(source.path, dest, overwrite)
    with staged_folder(dest, overwrite) as staging:
        copy_support_files(source, staging, warn, exclude)
        rewritten = write_shards(source, staging, replacements)
        for relative, content in (extra_files or {}).items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    return rewritten
