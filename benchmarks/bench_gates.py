"""Gate screening on cached features: candidates per minute, against refitting every candidate, same run.

Reads the anchor feature cache a ``sparse-edit gates`` run wrote (default ``runs/gates``, from
``examples/configs/gates-anchors.toml``; without it, that run is made first and timed: one forward pass
per prompt). Then screens a grid of at least 1,000 gate candidates (layers × LDA shrinkages × both
calibrations × threshold limits, out of fold with 5 folds), and, as the baseline, a sample of the same
candidates with every fold's probe and language read-out refitted per candidate (``share_fits`` off).
Both give the same figures; prints seconds, candidates per minute and the ratio.

    python benchmarks/bench_gates.py [--gates runs/gates] [--baseline-layers 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from runner import ROOT, need_shared_data, save

import sparse_edit as se

CONFIG = ROOT / "examples" / "configs" / "gates-anchors.toml"
STRENGTHS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 0.85, 0.95)
LIMITS = (0.0, 0.005, 0.01, 0.015, 0.02, 0.03)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", type=Path, default=ROOT / "runs" / "gates", help="a gates output folder")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    features = args.gates / "features-anchor.safetensors"
    feature_seconds = None
    if not features.exists():
        need_shared_data()
        start = time.perf_counter()
        se.gates(CONFIG, output=args.gates)
        feature_seconds = time.perf_counter() - start
    cache = se.FeatureCache.load(features)
    ours = se.screen_gates(cache, strengths=STRENGTHS, limits=LIMITS, folds=args.folds)
    # The baseline on one layer, two strengths: every candidate refits its folds.
    sample = se.screen_gates(
        cache, layers=cache.layers[:1], strengths=STRENGTHS[:2], limits=LIMITS, folds=args.folds, share_fits=False
    )
    same = {c.settings: c.predicted for c in ours.candidates}
    assert all(same[c.settings] == c.predicted for c in sample.candidates), "sharing fits changed a figure"
    ours_each = ours.seconds / len(ours.candidates)
    baseline_each = sample.seconds / len(sample.candidates)
    payload = {
        "command": "python benchmarks/bench_gates.py",
        "anchors": cache.describe(),
        "candidates": len(ours.candidates),
        "screen_seconds": ours.seconds,
        "candidates_per_minute": 60 * len(ours.candidates) / ours.seconds,
        "baseline_candidates": len(sample.candidates),
        "baseline_seconds_per_candidate": baseline_each,
        "screen_seconds_per_candidate": ours_each,
        "speedup": baseline_each / ours_each,
        "feature_seconds_this_run": feature_seconds,
        "folds": args.folds,
    }
    path = save("gates-screen", payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "anchors"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
