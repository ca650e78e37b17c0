"""The Optuna study behind ``sparse-edit tune``: run the trials, then write the study folder once.

The study's storage (``storage``: the local journal ``.NAME.tune.db`` beside the output, or shared
``--storage``) holds the trials and the base model's dev verdicts; its key over every setting that
decides a trial's outcome must match for a rerun to resume it or a worker to join it. The output
folder is staged and moved into place once the study ends; then a local journal goes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_edit.console import Reporter
from sparse_edit.edit.anchors import build_anchors
from sparse_edit.edit.run import load_edit_inputs, run_apply
from sparse_edit.errors import SparseEditError
from sparse_edit.io.files import file_sha256
from sparse_edit.io.layout import STUDY_DB, TUNED_EDIT_DIR
from sparse_edit.io.staging import staged_folder
from sparse_edit.options import ApplyOptions, TuneOptions
from sparse_edit.options.traits import NOT_IN_STUDY_KEY, fields_with
from sparse_edit.runner import Steps
from sparse_edit.tuning.front import (
    CHOICE_RULE,
    NONE_QUALIFIES,
    OBJECTIVES,
    Choice,
    Constraints,
    TrialRow,
    choose,
    pareto_front,
)
from sparse_edit.tuning.outcome import Verdicts
from sparse_edit.tuning.space import SearchSpace, describe
from sparse_edit.tuning.storage import (
    StudyStore,
    check_journal,
    check_reachable,
    finished,
    open_study,
    wait_for_others,
)
from sparse_edit.tuning.study_files import trial_config, write_files
from sparse_edit.tuning.trial import TrialRunner, apply_settings
from sparse_edit.version import __version__

# Settings that only decide how long the study runs or which trial is chosen: a resumed study may change them.
NOT_IN_KEY = set(fields_with(TuneOptions, NOT_IN_STUDY_KEY))


@dataclass
class TuneResult:
    payload: dict[str, Any]  # what pareto.json holds
    chosen: TrialRow | None
    written: list[str]


def worker_id() -> str:
    """host:pid of this process: which process ran a trial (several may share a study through --storage)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def study_key(options: TuneOptions, weights_sha256: str, artifact_sha256: str) -> str:
    settings = options.model_dump(mode="json", exclude=NOT_IN_KEY)
    text = json.dumps(
        {"settings": settings, "weights": weights_sha256, "artifact": artifact_sha256}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()


def constraints(options: TuneOptions) -> Constraints:
    return Constraints(
        options.max_newly_answered,
        options.max_newly_invalid,
        options.max_changed_share,
        options.max_reference_change,
    )


def choice(options: TuneOptions) -> Choice:
    return Choice(options.max_over_refusal, options.kl_budget, options.max_over_refusal_per_group)


def tune_steps() -> Steps[TuneOptions, StudyStore, StudyOutcome, TuneResult]:
    """tune's steps for ``run_command``; a ``--worker`` claims no output (the process without it writes it)."""
    return Steps("tune", check_tune, run_study, write_tune, claims=lambda options: not options.worker)


def check_tune(options: TuneOptions) -> StudyStore:
    """The study's storage, reachable."""
    store = StudyStore.of(options.storage, options.output)
    check_reachable(store)
    return store


@dataclass
class StudyOutcome:
    """What tune's work leaves for its write (a worker leaves only the store: it writes nothing)."""

    store: StudyStore
    payload: dict[str, Any] | None = None
    rows: list[TrialRow] = field(default_factory=list)
    chosen: TrialRow | None = None


def run_study(options: TuneOptions, store: StudyStore, reporter: Reporter) -> StudyOutcome:
    """Run the study's trials (resuming its journal), wait for other workers, and build pareto.json."""
    if not store.shared:
        check_journal(Path(store.spec))  # under the claim: no other run is writing it
    runner, space = prepare(options, reporter)
    fingerprint = runner.loaded.checkpoint.fingerprint()
    artifact_sha = file_sha256(options.artifact)
    key = study_key(options, runner.loaded.checkpoint.weights_sha256(), artifact_sha)
    study = open_study(store, key, options.seed, constraints(options), OBJECTIVES, options.worker)
    done = finished(study)
    reporter.info(
        f"tune: {options.trials} trials ({done} done), strategies {', '.join(space.strategies)}, layers "
        f"{space.layers[0]}..{space.layers[-1]}; dev: {len(runner.dev.harmful)} harmful, "
        f"{len(runner.dev.harmless)} harmless prompts, {options.max_new_tokens}-token replies"
    )
    base = _base_verdicts(study, runner)
    started = time.perf_counter()
    if options.trials > done:
        search(study, runner, space, base, options, reporter, options.trials - done)
    if options.worker:
        reporter.info(f"tune: worker done; the study in {store.spec} holds {finished(study)} finished trials")
        return StudyOutcome(store)
    if store.shared:
        slowest = max((row.seconds for row in _rows(study)), default=0.0)
        still = wait_for_others(study, max(2 * slowest, 60.0), reporter)
        if still:
            reporter.warn(
                f"{still} trial(s) of other workers still running were not waited for (their process gone?)"
            )
    rows = _rows(study)
    chosen = choose(rows, choice(options), constraints(options))
    if chosen is None:
        reporter.warn(NONE_QUALIFIES)
    payload = _payload(options, study, rows, chosen, base, runner, fingerprint, artifact_sha)
    payload["study"]["seconds_this_run"] = time.perf_counter() - started
    return StudyOutcome(store, payload, rows, chosen)


def write_tune(options: TuneOptions, outcome: StudyOutcome, reporter: Reporter) -> TuneResult:
    """The tune folder, staged; then the local journal goes (the folder holds the study now)."""
    if outcome.payload is None:
        return TuneResult({}, None, [])
    written = write_study(options, outcome.store, outcome.payload, outcome.rows, outcome.chosen, reporter)
    if not outcome.store.shared:
        Path(outcome.store.spec).unlink(missing_ok=True)
    return TuneResult(outcome.payload, outcome.chosen, written)


def prepare(options: TuneOptions, reporter: Reporter) -> tuple[TrialRunner, SearchSpace]:
    """Load the artifact and model, build the anchors and the search space: what every trial shares."""
    inputs = load_edit_inputs(options, reporter)
    artifact, loaded, low_langs = inputs.artifact, inputs.loaded, inputs.low_langs
    space, skipped = SearchSpace.for_model(options, loaded.checkpoint, loaded.num_layers)
    for reason in skipped:
        reporter.warn(f"left out of the search: {reason}")
    anchors = build_anchors(options, loaded, inputs.prompts, reporter)
    if not anchors.low_dev or not anchors.safe_dev:
        raise SparseEditError(
            "--dev-fraction: tune judges trials on dev prompts, and this split leaves no harmful or no harmless dev "
            "prompt; raise --dev-fraction or add prompts"
        )
    return TrialRunner(options, loaded, artifact, anchors, low_langs, space.layers, reporter), space


def search(
    study: Any,
    runner: TrialRunner,
    space: SearchSpace,
    base: Verdicts,
    options: TuneOptions,
    reporter: Reporter,
    trials: int,
) -> None:
    """Run up to ``trials`` more trials (or until --timeout), with a progress line per finished trial; with other
    workers on the same study, until the study as a whole holds --trials finished trials."""
    import optuna
    from optuna.trial import TrialState

    def objective(trial: optuna.Trial) -> tuple[float, ...]:
        settings = space.suggest(trial)
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("worker", worker_id())
        start = time.perf_counter()
        try:
            result = runner.run(settings, base)
        except SparseEditError as exc:
            reporter.warn(f"trial {trial.number}: {describe(settings)}: {exc}; skipped")
            raise optuna.TrialPruned(str(exc)) from None
        trial.set_user_attr("outcome", result.as_dict())
        if settings.get("detector_gate"):
            trial.set_user_attr("screen", screened(settings["detector_gate"]))
        trial.set_user_attr("seconds", time.perf_counter() - start)
        trial.set_user_attr("phase_seconds", runner.phase_seconds)
        return result.objectives()

    def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != TrialState.COMPLETE:
            return
        o = trial.user_attrs["outcome"]
        best = choose(_rows(study), choice(options), constraints(options))
        best_text = f"trial {best.number} ({best.outcome['attack_success']:.3f})" if best else "none qualifies yet"
        done = finished(study)
        reporter.info(
            f"trial {trial.number} ({done}/{options.trials}) {describe(trial.user_attrs['settings'])} | "
            f"attack success {o['attack_success']:.3f} over-refusal {o['over_refusal']:+.3f} KL {o['kl']:.4f} "
            f"newly answered {o['newly_answered']} newly invalid {o.get('newly_invalid', 0)} | "
            f"{trial.user_attrs['seconds']:.0f}s | best: {best_text}"
        )

    enough = optuna.study.MaxTrialsCallback(options.trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
    study.optimize(objective, n_trials=trials, timeout=options.timeout, callbacks=[progress, enough], catch=())


def screened(gate_path: str) -> dict[str, Any]:
    """What the screen predicted for a gate (out of fold on the anchors): the figures a trial's replies test."""
    from sparse_edit.gates.gate import Gate

    predicted = Gate.load(Path(gate_path)).predicted
    keys = ("catch_non_reference", "firing_max", "firing_pooled", "catch", "firing")
    return {key: predicted[key] for key in keys if key in predicted}


def write_study(
    options: TuneOptions,
    store: StudyStore,
    payload: dict[str, Any],
    rows: list[TrialRow],
    chosen: TrialRow | None,
    reporter: Reporter,
) -> list[str]:
    """The tune folder, staged: the study, the front with each front trial's apply config and, when a trial
    qualifies, chosen.toml (and edited/)."""
    on_front = set(payload["front"])
    front_tomls = {
        row.number: trial_config(apply_settings(options, row.settings), row, options.output)
        for row in rows
        if row.number in on_front
    }
    with staged_folder(options.output, options.overwrite, "tune") as staging:
        if not store.shared:  # shared storage stays where it is; pareto.json holds every trial
            shutil.copyfile(store.spec, staging / STUDY_DB)
        if chosen is None:
            return write_files(staging, payload, None, front_tomls)
        values = apply_settings(options, chosen.settings)
        written = write_files(staging, payload, trial_config(values, chosen, options.output), front_tomls)
        if options.apply:
            run_apply(ApplyOptions.model_validate({**values, "output": staging / TUNED_EDIT_DIR}), reporter)
            written.append(TUNED_EDIT_DIR)
    return written


def _base_verdicts(study: Any, runner: TrialRunner) -> Verdicts:
    """The base model's dev verdicts and reply tokens (the trials' drafts): generated once per study and
    kept in its journal."""
    stored = study.user_attrs.get("base_verdicts")
    tokens = study.user_attrs.get("base_reply_tokens")
    if stored is not None and tokens is not None:
        runner.base_tokens = {group: [list(row) for row in rows] for group, rows in tokens.items()}
        return Verdicts(tuple(stored["harmful"]), tuple(stored["harmless"]))
    verdicts = runner.verdicts()
    study.set_user_attr("base_verdicts", {"harmful": list(verdicts.harmful), "harmless": list(verdicts.harmless)})
    study.set_user_attr("base_reply_tokens", runner.base_tokens)
    return verdicts


def _rows(study: Any) -> list[TrialRow]:
    from optuna.trial import TrialState

    return [
        TrialRow(
            t.number,
            t.user_attrs["settings"],
            t.user_attrs["outcome"],
            t.user_attrs["seconds"],
            t.user_attrs.get("worker", ""),
            t.user_attrs.get("phase_seconds", {}),
            t.user_attrs.get("screen"),
        )
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]


def _payload(
    options: TuneOptions,
    study: Any,
    rows: list[TrialRow],
    chosen: TrialRow | None,
    base: Verdicts,
    runner: TrialRunner,
    fingerprint: str,
    artifact_sha: str,
) -> dict[str, Any]:
    import optuna
    from optuna.trial import TrialState

    from sparse_edit.tuning.outcome import attack_success, parity

    base_by_lang = attack_success(runner.dev, base.harmful)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {
        "schema_version": 1,
        "tool_version": __version__,
        "optuna_version": optuna.__version__,
        "settings": options.model_dump(mode="json", exclude={"output", "overwrite"}),
        "seed": options.seed,
        "model_fingerprint": fingerprint,
        "artifact_sha256": artifact_sha,
        "dev": {
            "harmful": len(runner.dev.harmful),
            "harmless": len(runner.dev.harmless),
            "low_langs": list(runner.dev.low_langs),
        },
        "base": {
            "attack_success": sum(base_by_lang.values()) / len(base_by_lang) if base_by_lang else 0.0,
            "attack_success_by_lang": base_by_lang,
            "harmless_refusal": sum(1 for v in base.harmless if v == "refusal") / max(len(base.harmless), 1),
            "parity": parity(runner.dev, base, base)[1],
        },
        "choice_rule": CHOICE_RULE,
        "trials": [
            {
                "number": r.number,
                "label": describe(r.settings),
                "settings": r.settings,
                "outcome": r.outcome,
                "seconds": r.seconds,
                "phase_seconds": r.phase_seconds,
                "worker": r.worker,
                **({"screen": r.screen} if r.screen is not None else {}),
            }
            for r in rows
        ],
        "front": [r.number for r in pareto_front(rows, constraints(options))],
        "chosen": chosen.number if chosen is not None else None,
        "study": {
            "complete": states.count(TrialState.COMPLETE),
            "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL),
            "seconds_in_trials": sum(r.seconds for r in rows),
        },
    }
