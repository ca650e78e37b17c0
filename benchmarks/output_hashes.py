"""Hashes of every output of locate, apply (seven variants), revert and eval on five tiny model families.

Run it at two commits with the same folder and compare: a refactor that changes no behaviour gives
identical JSON (paths inside manifests and reports are the folder's, so keep the folder the same).
Run: python benchmarks/output_hashes.py /tmp/hashes > before.json  (then again at the other commit)
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparse_edit.cli import app  # noqa: E402
from sparse_edit.testing import build_tiny_model  # noqa: E402
from tests.helpers import parallel_prompt_files  # noqa: E402

FAMILIES = ("llama", "qwen2", "gpt2", "phi3", "gemma3_text")
APPLY_VARIANTS = {
    "paper": ["--strategy", "paper", "--layer", "1"],
    "output": ["--strategy", "output", "--layer", "1"],
    "auto": ["--strategy", "output", "--strategy", "paper", "--layer", "auto", "--ceiling", "--dev-generate", "4"],
    "seq": ["--strategy", "output", "--layer", "0,1", "--harmless-tail-weight", "2", "--reference-weight", "1"],
    "detector": ["--strategy", "detector", "--layer", "1"],
    "release": ["--strategy", "detector", "--layer", "1", "--detector-mode", "release"],
    "attribution": ["--strategy", "paper", "--layer", "1", "--neuron-score", "attribution", "--proj", "gate,up"],
}
GATED_ONLY = {"detector", "release", "attribution"}


def run(*args: object) -> None:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code not in (0, 1):
        raise SystemExit(f"sparse-edit {' '.join(map(str, args))}: exit {result.exit_code}\n{result.output}")


def digest(path: Path) -> str | dict[str, str]:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".png")
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def main(root: Path) -> dict[str, object]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    harmful, harmless = parallel_prompt_files(root, count=10)
    common = ["--harmful", harmful, "--harmless", harmless, "--device", "cpu", "-q"]
    hashes: dict[str, object] = {}
    for family in FAMILIES:
        model = build_tiny_model(root / family, family, tied=family == "gpt2")
        artifact = root / f"{family}.safetensors"
        run("locate", "--model", model, *common, "--tau-stat", "0.3", "-o", artifact)
        hashes[f"{family}/locate"] = digest(artifact)
        for name, flags in APPLY_VARIANTS.items():
            if family == "gpt2" and name in GATED_ONLY:
                continue
            out = root / f"{family}-{name}"
            run(
                "apply",
                "--artifact",
                artifact,
                "-o",
                out,
                "--device",
                "cpu",
                "-q",
                "--gamma",
                "0.01",
                "--lam",
                "1e-3",
                *flags,
            )
            hashes[f"{family}/{name}"] = digest(out)
        run("revert", root / f"{family}-paper", "-o", root / f"{family}-restored")
        hashes[f"{family}/revert"] = digest(root / f"{family}-restored")
        report = root / f"{family}-report"
        run(
            "eval",
            "--model",
            root / f"{family}-output",
            "--base",
            model,
            *common,
            "--max-new-tokens",
            "5",
            "-o",
            report,
        )
        hashes[f"{family}/eval"] = digest(report)
    return hashes


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1, sort_keys=True))
