from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "ci" / "patch-model.sh"


def run_script(base: Path, config: Path, out: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SPARSE_EDIT=f"{sys.executable} -m sparse_edit")
    return subprocess.run(
        ["bash", str(SCRIPT), str(base), str(config), str(out)], capture_output=True, text=True, cwd=ROOT, env=env
    )


def write_config(folder: Path, gate: str) -> Path:
    """The example config with tiny-model settings (few prompts, short replies, CPU)."""
    folder.mkdir()
    prompts = '["examples/prompts/safety-eval.jsonl"]'
    (folder / "locate.toml").write_text(f'harmful = {prompts}\nharmless = {prompts}\nlimit = 4\ndevice = "cpu"\n')
    (folder / "apply.toml").write_text('strategy = ["output"]\nlayer = "1"\noutput_gamma = 1.0\ndevice = "cpu"\n')
    (folder / "eval.toml").write_text(
        f"harmful = {prompts}\nharmless = {prompts}\nlimit = 3\nmax_new_tokens = 4\nrepresentation = false\n"
        f'device = "cpu"\nfail_if = ["{gate}", "over_refusal_delta > 1.0"]\n'
    )
    return folder


def test_recipe_patches_verifies_and_reports(tiny_models, tmp_path):
    out = tmp_path / "out"
    result = run_script(tiny_models("qwen2"), write_config(tmp_path / "config", "kl_harmless > 100"), out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "verify.json").read_text())["ok"] is True
    assert (out / "model" / "sparse_edit" / "manifest.json").is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    assert [g["tripped"] for g in report["gates"]] == [False, False]


def test_recipe_exit_codes_for_a_tripped_gate_and_bad_input(tiny_models, tmp_path):
    config = write_config(tmp_path / "config", "kl_harmless >= 0")
    result = run_script(tiny_models("qwen2"), config, tmp_path / "out")
    assert result.returncode == 1, result.stderr[-3000:]
    assert (tmp_path / "out" / "report" / "report.json").is_file()
    result = run_script(tiny_models("qwen2"), config, tmp_path / "out")
    assert result.returncode == 2 and "already exists" in result.stderr
    (config / "apply.toml").unlink()
    result = run_script(tiny_models("qwen2"), config, tmp_path / "other")
    assert result.returncode == 2 and "apply.toml is missing" in result.stderr
    assert not (tmp_path / "other").exists()
