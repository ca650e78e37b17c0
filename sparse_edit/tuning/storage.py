"""Where a tune study lives, and how several processes share one.

By default the study is journaled in SQLite beside the output (``.NAME.tune.db``): one process at a
time (the output's claim says so), resumed when rerun with the same settings, removed once the study
folder is written. With ``--storage`` the study lives in storage several ``sparse-edit tune``
processes share — an RDB URL (``sqlite:///study.db``, ``postgresql://...``) or a journal file that
Optuna appends to under a file lock — so one process per GPU or machine runs trials of the same study;
``--worker`` processes only run trials, and the one process without it writes the study folder once.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparse_edit.console import Reporter
from sparse_edit.errors import SparseEditError
from sparse_edit.tuning.front import Constraints

STUDY_NAME = "sparse-edit-tune"
# Shared RDB storage: a worker's running trial is failed (and its parameters queued again) once it has sent
# no heartbeat for GRACE_S: its process is gone.
HEARTBEAT_S = 30
GRACE_S = 120
POLL_S = 2.0


def journal_path(folder: Path) -> Path:
    return folder.with_name(f".{folder.name}.tune.db")


@dataclass(frozen=True)
class StudyStore:
    """The storage a study is opened in: the local journal (``shared`` False) or ``--storage``."""

    spec: str
    shared: bool

    @classmethod
    def of(cls, storage: str | None, output: Path) -> StudyStore:
        return cls(shared_storage(storage), True) if storage else cls(str(journal_path(output)), False)

    @property
    def where(self) -> str:
        return f"--storage {self.spec}" if self.shared else f"the study journal {self.spec}"


STORAGE_FORMS = (
    "--storage takes an RDB URL (sqlite:///FILE, postgresql://...), an SQLite file such as the study.db tune "
    "writes, or an Optuna journal file (a new path starts one)"
)
SQLITE_HEADER = b"SQLite format 3\x00"


def shared_storage(spec: str) -> str:
    """``--storage`` as Optuna opens it, checked before any work: an SQLite file (the ``study.db`` tune writes)
    becomes its ``sqlite:///`` URL; a URL's or journal's folder must exist; an existing file must be SQLite or a
    journal."""
    if spec.startswith("sqlite:///"):
        _check_folder(spec, Path(spec.removeprefix("sqlite:///")))
        return spec
    if "://" in spec:
        return spec
    path = Path(spec)
    if path.is_dir():
        raise SparseEditError(f"--storage {spec}: is a folder; {STORAGE_FORMS}")
    if not path.exists():
        _check_folder(spec, path)
        return spec
    with path.open("rb") as handle:
        head = handle.read(len(SQLITE_HEADER))
        handle.seek(0)
        first_line = handle.readline()
    if head == SQLITE_HEADER:
        return f"sqlite:///{path.resolve()}"
    if first_line.strip() and not first_line.lstrip().startswith(b"{"):
        raise SparseEditError(
            f"--storage {spec}: is neither an SQLite file nor an Optuna journal; {STORAGE_FORMS}"
        )
    return spec


def _check_folder(spec: str, path: Path) -> None:
    folder = Path(os.path.abspath(path)).parent
    if not folder.is_dir():
        raise SparseEditError(
            f"--storage {spec}: the folder {folder} does not exist; create it or pick another path"
        )


def check_journal(journal: Path) -> None:
    """Refuse, before any work, a journal that is not a sparse-edit study (Optuna would write into it)."""
    if not journal.exists():
        return
    fix = "move it away or delete it to start the study over"
    if not journal.is_file():
        raise SparseEditError(f"--output: the study journal {journal} is not a file; {fix}")
    with journal.open("rb") as handle:
        if handle.read(16) != SQLITE_HEADER:
            raise SparseEditError(f"--output: the study journal {journal} is not an SQLite file; {fix}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
            names = {row[0] for row in db.execute("SELECT study_name FROM studies")}
    except sqlite3.DatabaseError as error:
        raise SparseEditError(
            f"--output: the study journal {journal} holds no Optuna study ({error}); {fix}"
        ) from None
    if not names <= {STUDY_NAME}:
        raise SparseEditError(f"--output: the study journal {journal} is not a sparse-edit tune study; {fix}")


def _storage(store: StudyStore) -> Any:
    import optuna

    if not store.shared:
        return f"sqlite:///{store.spec}"
    if "://" in store.spec:
        from optuna.storages import RetryFailedTrialCallback

        return optuna.storages.RDBStorage(
            store.spec,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            failed_trial_callback=RetryFailedTrialCallback(max_retry=1),
        )
    from optuna.storages.journal import JournalFileBackend

    # A folder was refused by ``shared_storage`` when the store was made.
    return optuna.storages.JournalStorage(JournalFileBackend(store.spec))


@contextlib.contextmanager
def _opening(store: StudyStore) -> Iterator[None]:
    """Optuna's and the database driver's errors on opening ``store`` as one line naming it."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (ValueError, OSError, SQLAlchemyError) as error:  # a malformed URL, an unreachable database, ...
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        raise SparseEditError(f"{store.where}: cannot open the study there ({reason})") from None


def open_study(
    store: StudyStore, key: str, seed: int, limits: Constraints, objectives: Sequence[str], worker: bool = False
) -> Any:
    """The stored study (resumed or joined when its key matches) or a new one. In the local journal a trial
    left running belongs to a killed run (the output's claim admits one process): it is failed and queued again.
    A worker's sampler is seeded apart from the others' (seed + its process id): with one seed, every process
    would sample the same first trials."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            seed=seed + os.getpid() if worker else seed,
            constraints_func=lambda trial: limits.excess(trial.user_attrs.get("outcome", {})),
        )
    with _opening(store):
        study = optuna.create_study(
            storage=_storage(store),
            study_name=STUDY_NAME,
            directions=["minimize"] * len(objectives),
            sampler=sampler,
            load_if_exists=True,
        )
    recorded = study.user_attrs.get("key")
    if recorded is None:
        study.set_user_attr("key", key)
    elif recorded != key:
        raise SparseEditError(
            f"{store.where} holds a study made with other settings (another model, artifact or search); rerun "
            "with those settings to resume or join it, or point at other storage to start over"
        )
    if not store.shared:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study.tell(trial.number, state=TrialState.FAIL)  # its process is gone (the lock says so)
            study.enqueue_trial(trial.params)
    return study


def check_reachable(store: StudyStore) -> None:
    """Open a database server's storage before any work, so a wrong URL fails now (SQLite files and journals
    were checked by ``shared_storage`` and are created only once the study starts)."""
    if not store.shared or "://" not in store.spec or store.spec.startswith("sqlite:///"):
        return
    with _opening(store):
        _storage(store)


def finished(study: Any) -> int:
    """Trials that count toward --trials: completed, or skipped because their edit could not be solved."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def wait_for_others(study: Any, patience_s: float, reporter: Reporter) -> int:
    """Wait until no trial of the study is running (other workers finishing theirs) or ``patience_s`` passed;
    returns how many are still running."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + patience_s
    announced = False
    while True:
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if not running or time.monotonic() >= deadline:
            return running
        if not announced:
            reporter.info(f"tune: waiting for {running} trial(s) other workers are running")
            announced = True
        time.sleep(POLL_S)
