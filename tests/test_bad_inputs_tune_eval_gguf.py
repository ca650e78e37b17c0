"""Bad inputs and faults of the newer paths: gates, weights of another model, tune, eval resume, GGUF output,
and two runs to one output. Every refusal is checked by ``refused``: the exit code, one line naming the file
or flag, no traceback, every input byte-identical and nothing written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sparse_edit.evaluation.journal import journal_path as eval_journal_path
from sparse_edit.io.claims import CLAIM_SUFFIX, claimed
from sparse_edit.io.destination import OUTPUT_MARKER
from sparse_edit.io.layout import JOURNAL_KIND
from sparse_edit.testing import build_tiny_model
from sparse_edit.tuning.storage import journal_path as tune_journal_path
from tests.helpers import CLI, apply_args, dead_pid, locate_and_apply, refused

PROMPTS = ("--harmful", "harmful.jsonl", "--harmless", "harmless.jsonl")
EVAL = ("eval", "--model", "edited", "--base", "base", *PROMPTS, "--max-new-tokens", "4", "--device", "cpu", "-q")
TUNE = (
    "tune",
    "--artifact",
    "art.safetensors",
    "--trials",
    "2",
    "--device",
    "cpu",
    "--max-new-tokens",
    "4",
    "--dev-fraction",
    "0.3",
    "-q",
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A base model, a same-shape model of another seed, prompts, an artifact and an edited folder."""
    root = tmp_path_factory.mktemp("pristine-newer")
    build_tiny_model(root / "base", "llama")
    build_tiny_model(root / "other-seed", "llama", seed=1)
    locate_and_apply(root)
    return root


@pytest.fixture
def ws(pristine, tmp_path) -> Path:
    root = tmp_path / "ws"
    shutil.copytree(pristine, root)
    return root


def cli(root: Path, *args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SPARSE_EDIT_CACHE": str(root / ".cache")}
    return subprocess.run([*CLI, *map(str, args)], cwd=root, capture_output=True, text=True, env=env, timeout=300)


# ---- a gate or setting that cannot work fails before any work -------------------------------


@pytest.mark.parametrize(
    ("gate", "mentions"),
    [
        ("nosuch > 1", "unknown metric 'nosuch'"),
        ("asr_delt[th] > 0", "did you mean 'asr_delta'"),
        ("asr[xx] > 0.5", "no harmful prompts in xx"),
        ("asr > 0.5", "per language"),
    ],
)
def test_a_gate_that_cannot_be_evaluated_is_refused_before_any_reply(ws, gate, mentions):
    refused(ws, *EVAL, "-o", "report", "--fail-if", gate, mentions=("--fail-if", mentions))
    assert not eval_journal_path(ws / "report").exists()


def test_a_gate_that_needs_a_base_model_is_refused_without_one(ws):
    args = ("eval", "--model", "edited", *PROMPTS, "--max-new-tokens", "4", "--device", "cpu", "-q")
    refused(ws, *args, "-o", "report", "--fail-if", "kl_harmless > 0.05", mentions=("kl_harmless", "--base"))


@pytest.mark.parametrize(
    ("extra", "mentions"),
    [
        (("--layer", "9"), "--layer 9: the model has layers 0..1"),
        (("--layer", "auto", "--candidate-layers", "0", "7"), "--candidate-layers 7"),
        (("--strategy", "paper+nosuch"), "unknown strategy 'nosuch'"),
        (("--harmful", "missing.jsonl"), "--harmful: missing.jsonl matches no file"),
        (("--low-langs", "en"), "--low-langs"),
    ],
)
def test_apply_settings_are_checked_before_the_model_is_loaded(ws, extra, mentions):
    # --model names nothing: had the model been loaded first, the error would be about it.
    args = ["apply", "--artifact", "art.safetensors", "--model", "no-model-here", "-o", "out", "--device", "cpu"]
    refused(ws, *args, *extra, mentions=(mentions,))


@pytest.mark.parametrize(
    ("extra", "mentions"),
    [
        (("--max-over-refusal", "1.5"), "--max-over-refusal"),
        (("--max-newly-answered", "-0.1"), "--max-newly-answered"),
        (("--max-changed-share", "0"), "--max-changed-share"),
        (("--kl-budget", "0"), "--kl-budget"),
        (("--trials", "0"), "--trials"),
        (("--candidate-layers", "5"), "--candidate-layers 5"),
        (("--dev-harmless", "missing.jsonl"), "--dev-harmless: missing.jsonl matches no file"),
    ],
)
def test_tune_limits_and_sources_are_checked_before_the_model_is_loaded(ws, extra, mentions):
    refused(ws, *TUNE, "--model", "no-model-here", "-o", "study", *extra, mentions=(mentions,))


# ---- neurons of one model are not applied to another -------------------------------------------


def test_an_artifact_of_other_weights_is_refused_and_the_override_is_recorded(ws):
    line = refused(
        ws, *apply_args(Path("art.safetensors"), Path("out"), "--model", "other-seed"), mentions=("--artifact",)
    )
    assert "other-seed" in line and "base" in line and "--allow-other-weights" in line
    result = cli(
        ws, *apply_args(Path("art.safetensors"), Path("out"), "--model", "other-seed", "--allow-other-weights")
    )
    assert result.returncode == 0, result.stderr
    assert "--allow-other-weights" in result.stderr  # said out loud, not only in the manifest
    manifest = json.loads((ws / "out" / "sparse_edit" / "manifest.json").read_text())
    assert manifest["artifact"]["weights_check"] == "overridden"
    again = json.loads((ws / "edited" / "sparse_edit" / "manifest.json").read_text())
    assert again["artifact"]["weights_check"] == "matched"
    assert again["base"]["weights_sha256"] != manifest["base"]["weights_sha256"]


# ---- tune ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "mentions"),
    [(b"not a database at all", "not an SQLite file"), (None, "holds no Optuna study")],
)
def test_a_tune_journal_that_is_not_a_study_is_refused_and_kept(ws, content, mentions):
    journal = tune_journal_path(ws / "study")
    if content is None:
        import sqlite3

        with sqlite3.connect(journal) as db:
            db.execute("CREATE TABLE notes (text)")
        db.close()
    else:
        journal.write_bytes(content)
    refused(ws, *TUNE, "--max-changed-share", "1", "-o", "study", mentions=(journal.name, mentions))


def test_a_study_where_no_trial_qualifies_exits_1_and_is_still_written(ws):
    result = cli(ws, *TUNE, "--max-changed-share", "1e-9", "-o", "study")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("failed:")] == [
        "failed: no trial qualifies under --max-over-refusal, --max-over-refusal-per-group, --kl-budget, "
        "--max-newly-answered, --max-newly-invalid, --max-changed-share and --max-reference-change"
    ]
    payload = json.loads((ws / "study" / "pareto.json").read_text())
    assert payload["chosen"] is None and len(payload["trials"]) == 2
    assert not (ws / "study" / "chosen.toml").exists()
    assert not tune_journal_path(ws / "study").exists()


# ---- eval resume -----------------------------------------------------------------------------


def _replies_of_a_whole_run(ws: Path, name: str) -> list[str]:
    """The replies.jsonl lines of an uninterrupted eval to ``name``."""
    result = cli(ws, *EVAL, "--no-representation", "-o", name)
    assert result.returncode == 0, result.stderr
    return (ws / name / "replies.jsonl").read_text().splitlines()


def test_an_eval_journal_of_another_model_or_not_a_journal_is_refused(ws):
    journal = eval_journal_path(ws / "report")
    journal.write_text(json.dumps({"kind": JOURNAL_KIND, "key": "0" * 64}) + "\n")
    refused(ws, *EVAL, "-o", "report", mentions=(journal.name, "other settings or models"))
    journal.write_text("model,reply\nbase,hello\n")
    refused(ws, *EVAL, "-o", "report", mentions=(journal.name, "not a sparse-edit reply journal"))


def test_a_cut_journal_line_is_dropped_and_other_prompts_are_generated_afresh(ws):
    whole = _replies_of_a_whole_run(ws, "whole")
    # A killed run's journal: the header, some whole rows and one row cut short.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_AFTER_TWO_BATCHES,
            *EVAL,
            "--no-representation",
            "--batch-size",
            "4",
            "-o",
            "cut",
        ],
        cwd=ws,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    journal = eval_journal_path(ws / "cut")
    journal.write_bytes(journal.read_bytes()[:-25])  # the last row cut mid-write
    # Resumed with one prompt's text changed: its journaled reply belongs to other text and is not reused.
    rows = [json.loads(line) for line in (ws / "harmful.jsonl").read_text().splitlines()]
    rows[0]["text"] += " again"
    (ws / "harmful.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    resumed = cli(ws, *EVAL, "--no-representation", "--batch-size", "4", "-o", "cut")
    assert resumed.returncode == 0, resumed.stderr
    fresh = cli(ws, *EVAL, "--no-representation", "--batch-size", "4", "-o", "fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert (ws / "cut" / "replies.jsonl").read_text() == (ws / "fresh" / "replies.jsonl").read_text()
    assert (ws / "cut" / "replies.jsonl").read_text().splitlines() != whole  # the changed prompt was regenerated


KILL_AFTER_TWO_BATCHES = """
import os, signal, sys
import sparse_edit.evaluation.journal as journal
original, calls = journal.ReplyJournal.record, []
def record(self, *args, **kwargs):
    original(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
journal.ReplyJournal.record = record
from sparse_edit.cli import main
sys.argv = ["sparse-edit", *sys.argv[1:]]
main()
"""


# ---- GGUF output -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_ws(pristine, tmp_path_factory) -> Path:
    """A tiny GGUF source, its artifact and a patched copy."""
    pytest.importorskip("gguf")
    from sparse_edit.testing import write_tiny_gguf

    root = tmp_path_factory.mktemp("gguf-faults")
    for name in ("harmful.jsonl", "harmless.jsonl"):
        shutil.copy(pristine / name, root / name)
    write_tiny_gguf(build_tiny_model(root / ".hf", "qwen2"), root / "tiny.gguf", "F32")
    shutil.rmtree(root / ".hf")
    env = {**os.environ, "SPARSE_EDIT_CACHE": str(root / ".cache")}
    for args in (
        [
            "locate",
            "--model",
            "tiny.gguf",
            *PROMPTS,
            "--device",
            "cpu",
            "-q",
            "--tau-stat",
            "0.3",
            "-o",
            "art.safetensors",
        ],
        ["apply", "--artifact", "art.safetensors", "-o", "patched.gguf", *GGUF_EDIT],
    ):
        result = subprocess.run([*CLI, *args], cwd=root, capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr
    return root


GGUF_EDIT = ("--strategy", "output", "--layer", "1", "--gain", "4", "--device", "cpu", "-q")


@pytest.fixture
def gws(gguf_ws, tmp_path) -> Path:
    root = tmp_path / "gws"
    shutil.copytree(gguf_ws, root)
    return root


def test_a_truncated_or_foreign_gguf_source_is_named(gws):
    (gws / "cut.gguf").write_bytes((gws / "tiny.gguf").read_bytes()[:3000])
    (gws / "fake.gguf").write_bytes(b"PK\x03\x04 a zip file, not a model" * 10)
    locate = ("locate", *PROMPTS, "--device", "cpu", "-q", "-o", "a.safetensors")
    refused(gws, *locate, "--model", "cut.gguf", mentions=("cut.gguf", "truncated or damaged"))
    refused(gws, *locate, "--model", "fake.gguf", mentions=("fake.gguf", "not a GGUF file"))
    apply = ("apply", "--artifact", "art.safetensors", "-o", "p.gguf", *GGUF_EDIT)
    refused(gws, *apply, "--model", "cut.gguf", mentions=("cut.gguf", "truncated or damaged"))


def test_a_patched_gguf_whose_sidecar_was_edited_fails_verify_and_revert(gws):
    path = gws / "patched.gguf.sparse_edit" / "sparse_edit" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["changed_parameters"] += 1
    path.write_text(json.dumps(manifest))
    refused(gws, "verify", "tiny.gguf", "patched.gguf", "--skip-forward", code=1, mentions=("manifest",))
    refused(gws, "revert", "patched.gguf", "-o", "restored.gguf", mentions=("patched.gguf", "changed_parameters"))


def test_revert_refuses_a_patched_gguf_another_tool_changed(gws):
    import gguf

    reader = gguf.GGUFReader(str(gws / "patched.gguf"), "r+")
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")  # a tensor the edit left alone
    tensor.data[0, 0] += 1.0
    reader.data.flush()
    del reader
    refused(
        gws,
        "revert",
        "patched.gguf",
        "-o",
        "restored.gguf",
        mentions=("patched.gguf", "changed since sparse-edit apply"),
    )
    refused(gws, "verify", "tiny.gguf", "patched.gguf", "--skip-forward", code=1, mentions=("untouched",))


# ---- one writer per output; leftovers of killed runs ----------------------------------------------


def test_a_second_run_to_an_output_being_written_is_refused(ws):
    with claimed(ws / "out"):
        line = refused(ws, *apply_args(Path("art.safetensors"), Path("out")), mentions=("--output", "out"))
        assert f"another sparse-edit run (pid {os.getpid()})" in line


def test_two_runs_racing_to_one_output_leave_one_whole_output(ws):
    args = [*CLI, *apply_args(Path("art.safetensors"), Path("out"))]
    runs = [subprocess.Popen(args, cwd=ws, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [run.communicate(timeout=300)[1] for run in runs]
    outcomes = sorted(zip([run.returncode for run in runs], errors, strict=True))
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "Traceback" not in outcomes[1][1]
    result = cli(ws, "verify", "base", "out", "--skip-forward")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [p.name for p in ws.iterdir() if p.name.startswith(".out")] == []


KILLED_WHILE_MOVING_INTO_PLACE = """
import os, signal, sys
import sparse_edit.io.staging as staging
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
staging._move_into_place = die
from sparse_edit.cli import main
sys.argv = ["sparse-edit", *sys.argv[1:]]
main()
"""


def test_a_killed_apply_leaves_staging_that_a_run_to_another_output_sweeps(ws):
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            KILLED_WHILE_MOVING_INTO_PLACE,
            *apply_args(Path("art.safetensors"), Path("first")),
        ],
        cwd=ws,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert killed.returncode == -signal.SIGKILL
    left = sorted(p for p in ws.iterdir() if p.name.startswith(".first."))
    assert [p.name for p in left] == [left[0].name, f".first{CLAIM_SUFFIX}"]  # its staging folder and its claim
    assert (left[0] / OUTPUT_MARKER).is_file() and not (ws / "first").exists()  # complete, never renamed
    # Not ours though shaped like it: a folder without the marker, and a dead pid's file of another tool.
    foreign = ws / f".first.{dead_pid()}.abc.staging"
    foreign.mkdir()
    (ws / "notes.old").write_text("keep")
    result = cli(ws, *apply_args(Path("art.safetensors"), Path("second")))
    assert result.returncode == 0, result.stderr
    assert not any(p.exists() for p in left)
    assert foreign.is_dir() and (ws / "notes.old").read_text() == "keep"
