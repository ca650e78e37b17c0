"""Files a run both reads and writes (the tune study, the eval base cache) and checks that come before the
work, through the real command line. ``refused`` checks the exit code, one line naming the flag, no
traceback, and every file under the workspace byte-identical afterwards (study journal and models included).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sparse_edit.io.destination import OUTPUT_MARKER
from sparse_edit.testing import build_tiny_model
from tests.helpers import locate_and_apply, refused
from tests.test_bad_inputs_tune_eval_gguf import EVAL, cli
from tests.test_bad_inputs_tune_eval_gguf import TUNE as TUNE_BASE

# The output strategy keeps these tiny studies quick; any trial qualifies (--max-changed-share 1).
TUNE = (*TUNE_BASE, "--max-changed-share", "1", "--strategy", "output")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A base model, prompts, an artifact and an edited folder."""
    root = tmp_path_factory.mktemp("pristine-stores")
    build_tiny_model(root / "base", "llama")
    locate_and_apply(root)
    return root


@pytest.fixture
def ws(pristine, tmp_path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "ws"))


def _earlier_tune_output(root: Path) -> Path:
    folder = root / "runs" / "t"
    folder.mkdir(parents=True)
    (folder / OUTPUT_MARKER).write_text(json.dumps({"command": "tune"}) + "\n")
    return folder


@pytest.mark.parametrize("form", ["journal", "sqlite-url"])
def test_a_study_inside_the_tune_output_is_refused_and_kept(ws, form):
    folder = _earlier_tune_output(ws)
    journal = folder / ("j.log" if form == "journal" else "s.db")
    journal.write_text('{"op_code": 0}\n' if form == "journal" else "")
    storage = "runs/t/j.log" if form == "journal" else f"sqlite:///{journal}"
    refused(ws, *TUNE, "--storage", storage, "-o", "runs/t", "--overwrite", mentions=("--output", "--storage"))
    assert journal.exists()


@pytest.mark.parametrize("cache", ["base", "edited", "base/cache", "."])
def test_a_base_cache_that_is_inside_or_holds_an_input_is_refused(ws, cache):
    refused(ws, *EVAL, "--base-cache", cache, "-o", "report", mentions=("--base-cache",))


def test_a_storage_url_that_cannot_be_opened_is_one_line_before_the_model_loads(ws):
    line = refused(ws, *TUNE, "--storage", "sqlite:////missing-dir/x.db", "-o", "study", mentions=("--storage",))
    assert "/missing-dir" in line


def test_a_storage_file_of_neither_form_is_refused(ws):
    (ws / "notes.bin").write_bytes(b"\xfb\x00binary")
    refused(ws, *TUNE, "--storage", "notes.bin", "-o", "study", mentions=("--storage", "neither"))


def test_the_study_file_tune_writes_can_be_passed_back_as_storage(ws):
    first = cli(ws, *TUNE, "-o", "runs/t")
    assert first.returncode in (0, 1), first.stderr  # 1: no trial qualified; the study is written either way
    study_db = ws / "runs" / "t" / "study.db"
    before = json.loads((ws / "runs" / "t" / "pareto.json").read_text())
    again = cli(ws, *TUNE, "--storage", "runs/t/study.db", "-o", "runs/u")
    assert again.returncode == first.returncode, again.stderr
    after = json.loads((ws / "runs" / "u" / "pareto.json").read_text())
    assert [t["outcome"] for t in after["trials"]] == [t["outcome"] for t in before["trials"]]
    assert study_db.exists()


def test_gguf_out_from_a_folder_is_refused_before_any_work(ws):
    # Without -q, any work done first would print progress lines; refused() allows only the error line.
    args = ["apply", "--artifact", "art.safetensors", "--layer", "1", "--device", "cpu", "-o", "patched.gguf"]
    result = cli(ws, *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("is not a .gguf file; GGUF out needs GGUF in"), result.stderr
    refused(ws, *args, mentions=("GGUF out needs GGUF in",))
