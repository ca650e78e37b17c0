"""Hashes of every output of locate, apply (seven variants), revert, eval and tune on five tiny model families.

Run it at two commits with the same folder and compare: a refactor that changes no behaviour gives
identical JSON (paths inside manifests and reports are the folder's, so keep the folder the same).
Run: python benchmarks/output_hashes.py /tmp/hashes > before.json  (then again at the other commit)
Not part of `make bench`: it measures no speed, it is a refactor's check.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sparse_edit as se  # noqa: E402
from sparse_edit.testing import build_tiny_model  # noqa: E402
from tests.helpers import parallel_prompt_files  # noqa: E402

FAMILIES = ("llama", "qwen2", "gpt2", "phi3", "gemma3_text")
APPLY_VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"strategy": ["paper"], "layer": "1"},
    "output": {"strategy": ["output"], "layer": "1"},
    "auto": {"strategy": ["output", "paper"], "layer": "auto", "ceiling": True, "dev_generate": 4},
    "seq": {"strategy": ["output"], "layer": "0,1", "harmless_tail_weight": 2.0, "reference_weight": 1.0},
    "detector": {"strategy": ["detector"], "layer": "1"},
    "release": {"strategy": ["detector"], "layer": "1", "detector_mode": "release"},
    "attribution": {"strategy": ["paper"], "layer": "1", "neuron_score": "attribution", "proj": "gate,up"},
}
GATED_ONLY = {"detector", "release", "attribution"}
TUNED = ("llama",)  # a tune study is slower: one family


def digest(path: Path) -> str | dict[str, str]:
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix not in (".png", ".db"))
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def main(root: Path) -> dict[str, object]:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    harmful, harmless = parallel_prompt_files(root, count=10)
    common: dict[str, Any] = {"harmful": [str(harmful)], "harmless": [str(harmless)], "device": "cpu"}
    hashes: dict[str, object] = {}
    for family in FAMILIES:
        model = build_tiny_model(root / family, family, tied=family == "gpt2")
        artifact = root / f"{family}.safetensors"
        se.locate(model=str(model), tau_stat=0.3, output=artifact, **common)
        hashes[f"{family}/locate"] = digest(artifact)
        for name, settings in APPLY_VARIANTS.items():
            if family == "gpt2" and name in GATED_ONLY:
                continue
            out = root / f"{family}-{name}"
            se.apply_edit(artifact=artifact, output=out, device="cpu", gamma=0.01, lam=1e-3, **settings)
            hashes[f"{family}/{name}"] = digest(out)
        se.revert(root / f"{family}-paper", root / f"{family}-restored")
        hashes[f"{family}/revert"] = digest(root / f"{family}-restored")
        report = root / f"{family}-report"
        se.evaluate(model=root / f"{family}-output", base=str(model), max_new_tokens=5, output=report, **common)
        hashes[f"{family}/eval"] = digest(report)
        if family in TUNED:
            study = root / f"{family}-tune"
            se.tune(
                artifact=artifact,
                trials=3,
                reply_tokens=4,
                dev_fraction=0.3,
                max_newly_answered=1.0,
                max_changed_share=1.0,
                output=study,
            )
            # The study's timings differ run to run: the apply configs it writes are what must not change.
            hashes[f"{family}/tune"] = {
                str(p.relative_to(study)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(study.rglob("*.toml"))
            }
    return hashes


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1, sort_keys=True))
