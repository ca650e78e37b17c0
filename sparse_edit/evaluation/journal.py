"""The reply journal of ``sparse-edit eval``: replies are kept as they come in, so a stopped run resumes.

The journal is ``.NAME.replies.jsonl`` beside the report folder ``NAME``. Its first line records
a key over every setting that decides a reply (models' fingerprints, generation settings);
each later line is one generated reply. A rerun with the same ``-o`` and the same key reuses
the replies it finds and generates only the rest; a different key is refused, so replies of
two configurations are never mixed. The journal is removed once the report is in place.

``eval --base-cache DIR`` keeps the base model's replies in a journal of their own in DIR, keyed by the
base model and the generation settings alone, and never removed: later runs against the same base
read them instead of generating them again.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sparse_edit.data.prompts import Prompt
from sparse_edit.errors import SparseEditError
from sparse_edit.io.layout import JOURNAL_KIND as KIND

ReplyKey = tuple[str, str, str, str, str]  # (model tag, class, lang, prompt id, digest of the prompt text)


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def journal_path(report_folder: Path) -> Path:
    return report_folder.with_name(f".{report_folder.name}.replies.jsonl")


def settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def _check_header(path: Path, key: str) -> None:
    """Refuse a file that is not a reply journal, or one of other settings, without touching it."""
    with path.open("rb") as stream:
        first = stream.readline()
    try:
        header = json.loads(first) if first.endswith(b"\n") else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    ours = f'{{"kind": {json.dumps(KIND)}'.encode()
    if not first.endswith(b"\n") and (ours.startswith(first) or first.startswith(ours)):
        return  # killed while writing its header: no reply in it yet, so it starts over
    if not isinstance(header, dict) or header.get("kind") != KIND:
        raise SparseEditError(f"{path}: not a sparse-edit reply journal; move it away or pick another -o")
    if header.get("key") != key:
        raise SparseEditError(
            f"{path}: replies of an interrupted eval with other settings or models; rerun with the same "
            "settings to resume, or delete it to start over"
        )


def _drop_cut_line(path: Path) -> None:
    """Cut the journal back to its last whole line: a run killed mid-write leaves a partial last row,
    and appending after it would glue the next row onto it."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as stream:
        stream.seek(size - 1)
        if stream.read(1) == b"\n":
            return
        stream.seek(max(0, size - (1 << 20)))
        tail = stream.read()
        cut = tail.rfind(b"\n")
        stream.truncate(size - len(tail) + cut + 1 if cut >= 0 else 0)


class ReplyJournal:
    """Append-only record of generated replies for one report folder and one settings key."""

    def __init__(self, path: Path, key: str, replies: dict[ReplyKey, str]) -> None:
        self.path = path
        self.key = key
        self.replies = replies

    @classmethod
    def open(cls, report_folder: Path, key: str) -> ReplyJournal:
        """Resume the journal beside ``report_folder`` (refused if made with other settings), or start one."""
        return cls.open_file(journal_path(Path(report_folder)), key)

    @classmethod
    def open_file(cls, path: Path, key: str) -> ReplyJournal:
        """Resume the journal ``path`` (refused if made with other settings), or start one there."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # no other eval sharing a --base-cache file writes meanwhile
            return cls._resume_or_start(path, key)

    @classmethod
    def _resume_or_start(cls, path: Path, key: str) -> ReplyJournal:
        if path.stat().st_size:
            _check_header(path, key)
            _drop_cut_line(path)  # ours and of these settings: a killed run's partial last row may go
        if path.stat().st_size == 0:
            path.write_text(json.dumps({"kind": KIND, "key": key}) + "\n", encoding="utf-8")
            return cls(path, key, {})
        replies: dict[ReplyKey, str] = {}
        try:
            for line in path.read_text(encoding="utf-8").splitlines()[1:]:
                row = json.loads(line)
                replies[(row["model"], row["class"], row["lang"], row["id"], row["text"])] = row["reply"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SparseEditError(f"{path}: damaged reply journal ({exc}); delete it to start over") from None
        return cls(path, key, replies)

    def known(self, model: str, label: str, prompts: Iterable[Prompt]) -> dict[tuple[str, str], str]:
        """Replies already generated for ``model`` and ``label`` to these very prompts, by (lang, id)."""
        found = {}
        for prompt in prompts:
            reply = self.replies.get((model, label, prompt.lang, prompt.id, text_digest(prompt.text)))
            if reply is not None:
                found[(prompt.lang, prompt.id)] = reply
        return found

    def record(self, model: str, label: str, rows: Iterable[tuple[Prompt, str]]) -> None:
        """Append (prompt, reply) rows and make them durable before going on."""
        lines = []
        for prompt, reply in rows:
            digest = text_digest(prompt.text)
            self.replies[(model, label, prompt.lang, prompt.id, digest)] = reply
            row = {
                "model": model,
                "class": label,
                "lang": prompt.lang,
                "id": prompt.id,
                "text": digest,
                "reply": reply,
            }
            lines.append(json.dumps(row, ensure_ascii=False) + "\n")
        with self.path.open("a", encoding="utf-8") as stream:
            # A --base-cache file may be shared by evals running side by side: whole batches, one at a time.
            fcntl.flock(stream, fcntl.LOCK_EX)
            stream.write("".join(lines))
            stream.flush()
            os.fsync(stream.fileno())

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)


def base_cache_journal(folder: Path, key: str) -> ReplyJournal:
    """The journal of ``eval --base-cache``: the base model's replies under one settings key, kept for later runs.

    One file per key (named by it), so a folder can hold the replies of several bases and settings.
    """
    if folder.exists() and not folder.is_dir():
        raise SparseEditError(f"--base-cache {folder}: not a folder; name a folder for the cached base replies")
    return ReplyJournal.open_file(folder / f"base-{key[:24]}.replies.jsonl", key)
