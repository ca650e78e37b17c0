"""How far apply's options object travels: the modules it enters, counted on a real run of a tiny model.

Counting, on one ``se.apply_edit`` of a tiny Llama (the detector strategy, whose solve reads its own settings):
a call *carries* the options when one of the callee's arguments is the ``ApplyOptions`` object itself or
holds it as an attribute (a dataclass such as a solve job); the object's own methods do not count. Every
carrying call made while ``apply_edit`` runs is recorded with the module (the "room") of the callee.

- rooms entered: the distinct modules of the callees (``sparse_edit.api`` itself not counted);
- climbs back up: carrying calls into a module already on the carrying call stack above the caller
  (the options going back into a room they came through);
- returns to a room left: carrying calls into a module entered before but no longer on that stack.

Not part of `make bench`: it measures no speed, it is a structure check.
Run: python benchmarks/options_reach.py [--strategy paper] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sparse_edit as se  # noqa: E402
from sparse_edit.testing import build_tiny_model  # noqa: E402
from tests.helpers import options_reach, parallel_prompt_files  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", default="detector")
    parser.add_argument("--json", action="store_true", help="print every room and crossing, not only the counts")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        harmful, harmless = parallel_prompt_files(root, count=10)
        model = build_tiny_model(root / "llama", "llama")
        common: dict[str, Any] = {"harmful": [str(harmful)], "harmless": [str(harmless)], "device": "cpu"}
        artifact = se.locate(model=str(model), tau_stat=0.3, output=root / "artifact.safetensors", **common)
        options = se.apply_options(
            artifact=artifact, output=root / "edited", strategy=[args.strategy], layer="1", dev_generate=2
        )
        reach = options_reach(lambda: se.apply_edit(options=options), options)
    print(json.dumps(reach if args.json else {k: v for k, v in reach.items() if isinstance(v, int)}, indent=1))
    return reach


if __name__ == "__main__":
    main()
