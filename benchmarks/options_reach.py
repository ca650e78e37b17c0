"""How far apply's options object travels: the modules it enters, counted on a real run of a tiny model.

Counting, on one ``se.apply_edit`` of a tiny Llama (the detector strategy, whose solve reads its own settings):
a call *carries* the options when one of the callee's arguments is the ``ApplyOptions`` object itself or
holds it as an attribute (a dataclass such as a solve job). Every carrying call made while ``apply_edit``
runs is recorded with the module (the "room") of the callee.

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
from tests.helpers import parallel_prompt_files  # noqa: E402


def _carries(value: Any, options: Any) -> bool:
    if value is options:
        return True
    fields = getattr(value, "__dict__", None)
    return isinstance(fields, dict) and any(item is options for item in fields.values())


def trace_reach(run: Any, options: Any) -> dict[str, Any]:
    """Run ``run()`` and follow ``options`` through the package's calls (see the module's docstring)."""
    stack: list[tuple[int, str]] = []  # (frame id, module) of the carrying calls still running
    rooms: list[str] = []
    climbs: list[str] = []
    returns: list[str] = []

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event == "return" and stack and stack[-1][0] == id(frame):
            stack.pop()
            return
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("sparse_edit") or module == "sparse_edit.api":
            return
        code = frame.f_code
        arguments = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        if not any(_carries(frame.f_locals.get(name), options) for name in arguments):
            return
        above = [room for _, room in stack[:-1]]
        caller = stack[-1][1] if stack else None
        if module != caller:
            if module in above:
                climbs.append(f"{caller} -> {module}.{code.co_name}")
            elif module in rooms:
                returns.append(f"{caller} -> {module}.{code.co_name}")
        if module not in rooms:
            rooms.append(module)
        stack.append((id(frame), module))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return {
        "rooms_entered": len(rooms),
        "climbs_back_up": len(climbs),
        "returns_to_a_room_left": len(returns),
        "rooms": rooms,
        "climbs": climbs,
        "returns": returns,
    }


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
        reach = trace_reach(lambda: se.apply_edit(options=options), options)
    print(json.dumps(reach if args.json else {k: v for k, v in reach.items() if isinstance(v, int)}, indent=1))
    return reach


if __name__ == "__main__":
    main()
