"""The benchmarks go through the library's public face and one runner (they run in `make bench`, not here)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sparse_edit as se

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
# Public modules besides the package face: test fixtures for users' own tests.
PUBLIC_MODULES = {"sparse_edit", "sparse_edit.testing"}
NOT_BENCHMARKS = {"runner.py", "output_hashes.py", "options_reach.py"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _registered() -> dict[str, str]:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import runner

        return dict(runner.BENCHMARKS)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_imports_only_the_public_face(script):
    for node in ast.walk(_tree(script)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sparse_edit"):
            assert node.module in PUBLIC_MODULES, f"{script.name} imports {node.module}"
            if node.module == "sparse_edit":
                assert {alias.name for alias in node.names} <= set(se.__all__), script.name
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sparse_edit"):
                    assert alias.name in PUBLIC_MODULES, f"{script.name} imports {alias.name}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_name_a_benchmark_reads_off_the_package_exists(script):
    used = {
        node.attr
        for node in ast.walk(_tree(script))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "se"
    }
    assert used <= set(se.__all__), f"{script.name} uses se.{sorted(used - set(se.__all__))}"
    for name in used:
        assert getattr(se, name) is not None


def test_every_benchmark_is_registered_with_the_runner_and_listed_in_the_readme():
    registered = _registered()
    modules = {path.stem for path in SCRIPTS if path.name not in NOT_BENCHMARKS}
    assert set(registered.values()) == modules
    readme = (BENCHMARKS / "README.md").read_text(encoding="utf-8")
    for name, module in registered.items():
        assert f"| `{name}` | `{module}.py` |" in readme
        tree = _tree(BENCHMARKS / f"{module}.py")
        assert ast.get_docstring(tree), f"{module}.py says what it measures"
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert mains and mains[0].args.args[0].arg == "argv", f"{module}.py has main(argv) for the runner"


def test_the_runner_refuses_an_unknown_benchmark_by_name():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "runner.py"), "no-such-bench"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unknown benchmark 'no-such-bench'" in result.stderr and "tune-study" in result.stderr
