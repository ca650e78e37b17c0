"""Several tune processes on one study (--storage): trials not duplicated, the study written once, each trial
measured as one process measures it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sparse_edit.api import tune_options
from sparse_edit.console import Reporter
from sparse_edit.tuning.study import prepare
from tests.helpers import run_cli
from tests.test_tune import TRIAL_FLAGS, read_pareto, tune_args

# Trials of a tiny model take a fraction of a second: each is slowed down so that both processes get some.
CLI = """
import sys, time
from sparse_edit.tuning import trial
run = trial.TrialRunner.run
trial.TrialRunner.run = lambda self, *args: (time.sleep(2.0), run(self, *args))[1]
from sparse_edit.cli import main
sys.argv = ["sparse-edit", *sys.argv[1:]]
main()
"""
ROOT = Path(__file__).resolve().parents[1]


def start(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CLI, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_processes_share_one_study_through_a_journal_file(located, tmp_path):
    _, artifact = located("llama")
    storage, study = tmp_path / "shared.journal", tmp_path / "study"
    args = tune_args(artifact, study, "--storage", str(storage), trials=8)
    worker = start(*args, "--worker")
    deadline = time.monotonic() + 300
    while b"trial_id" not in (storage.read_bytes() if storage.exists() else b""):  # the worker has begun a trial
        assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
        time.sleep(0.2)
    main = start(*args)
    for process in (worker, main):
        _, err = process.communicate(timeout=600)
        assert process.returncode in (0, 1), err
        assert "Traceback" not in err
    payload = read_pareto(study)
    trials = payload["trials"]
    numbers = [t["number"] for t in trials]
    assert len(numbers) == len(set(numbers)) >= 8  # every trial once (a worker may finish one more)
    settings = [json.dumps(t["settings"], sort_keys=True) for t in trials]
    assert len(set(settings)) == len(settings), "the two samplers drew the same trial"
    assert len({t["worker"] for t in trials}) == 2  # both processes ran trials
    assert storage.is_file() and not (study / "study.db").exists()  # shared storage stays where it is

    # Each trial measures what one process measures for its settings.
    options = tune_options(artifact=artifact, output=tmp_path / "unused", trials=1, **cli_settings())
    runner, _ = prepare(options, Reporter(quiet=True))
    base = runner.verdicts()
    for trial in trials[:3]:
        again = runner.run(trial["settings"], base).as_dict()
        assert json.loads(json.dumps(again)) == trial["outcome"]


def cli_settings() -> dict[str, object]:
    """TRIAL_FLAGS as keyword settings."""
    flags = dict(zip(TRIAL_FLAGS[0:-1:2], TRIAL_FLAGS[1:-1:2], strict=True))
    return {key.removeprefix("--").replace("-", "_"): value for key, value in flags.items()}


def test_a_worker_without_shared_storage_is_refused(located, tmp_path):
    _, artifact = located("llama")
    result = run_cli(*tune_args(artifact, tmp_path / "study", "--worker"), code=2)
    assert "give --storage" in result.output and not (tmp_path / "study").exists()


def test_a_shared_study_of_other_settings_is_refused(located, tmp_path):
    _, artifact = located("llama")
    storage = tmp_path / "shared.journal"
    run_cli(*tune_args(artifact, tmp_path / "one", "--storage", str(storage), trials=1))
    result = run_cli(
        *tune_args(artifact, tmp_path / "two", "--storage", str(storage), "--max-new-tokens", "5"), code=2
    )
    assert f"--storage {storage} holds a study made with other settings" in result.output
