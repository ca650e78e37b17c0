"""Hand-picked edit settings measured on the tune study's dev split, exactly as a tune trial measures them.

Loads the model, anchors and dev prompts of examples/configs/multijail-anchors-tune.toml (anchor side
only), judges the base model's dev replies once, then runs each setting as a trial: solve, apply in
memory, generate and judge dev replies, harmless KL. Use it to try settings the study's search space
does not hold (several layers, say) before spending test prompts on them.

    python benchmarks/dev_trials.py --artifact runs/tune-bf16/locate.safetensors --name dev-trials \
        --settings '[{"strategy": ["paper"], "layer": "16,18", "gamma": 0.15, "proj": "gate"}]'

Writes benchmarks/results/NAME.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

from common import ROOT, link_shared_data, save

CONFIG = ROOT / "examples" / "configs" / "multijail-anchors-tune.toml"
LOCATE_CONFIG = ROOT / "examples" / "configs" / "multijail-anchors-locate.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True, help="the study's locate artifact")
    parser.add_argument("--settings", required=True, help="JSON list of apply settings, one trial each")
    parser.add_argument("--name", default="dev-trials", help="results file name in benchmarks/results/")
    args = parser.parse_args()
    link_shared_data()

    from sparse_edit.console import Reporter
    from sparse_edit.options import TuneOptions
    from sparse_edit.tuning.study import prepare
    from sparse_edit.tuning.trial import attack_success

    locate = tomllib.loads(LOCATE_CONFIG.read_text())
    values = {
        **tomllib.loads(CONFIG.read_text()),
        "model": locate["model"],
        "languages": locate["languages"],
        "artifact": str(args.artifact),
        "output": str(ROOT / "runs" / args.name),
    }
    runner, _ = prepare(TuneOptions.model_validate(values), Reporter(quiet=True))
    started = time.perf_counter()
    base = runner.verdicts()
    rows = [{"settings": "base", "seconds": time.perf_counter() - started, "outcome": None}]
    for settings in json.loads(args.settings):
        started = time.perf_counter()
        outcome = runner.run(settings, base).as_dict()
        rows.append({"settings": settings, "seconds": time.perf_counter() - started, "outcome": outcome})
        print(
            f"{json.dumps(settings)}: attack success {outcome['attack_success']:.3f}, over-refusal rise "
            f"{outcome['over_refusal']:+.3f}, KL {outcome['kl']:.4f}, newly answered {outcome['newly_answered']}, "
            f"newly invalid {outcome['newly_invalid']}",
            flush=True,
        )
    base_by_lang = attack_success(runner.dev, base.harmful)
    path = save(
        args.name,
        {
            "command": " ".join(["python benchmarks/dev_trials.py", *sys.argv[1:]]),
            "config": str(CONFIG.relative_to(ROOT)),
            "dev": {"harmful": len(runner.dev.harmful), "harmless": len(runner.dev.harmless)},
            "base_attack_success": sum(base_by_lang.values()) / len(base_by_lang),
            "base_attack_success_by_lang": base_by_lang,
            "trials": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
