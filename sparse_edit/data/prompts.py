"""Multilingual prompt sets: loading, validation and parallel-id checks.

Three layouts are accepted, chosen by file extension:

* ``.jsonl``: one object per line, ``{"id", "lang", "text"}`` plus an optional ``"label"``
  (``harmful`` or ``harmless``);
* ``.json``: a list of ``{"instruction": ...}`` objects for one language (PolyRefuse layout);
  the id is the list index and the language comes from ``lang=`` or the file name
  (the last ``_``-separated two-letter part, e.g. ``harmful_train_translated_th.json``);
* ``.csv``: a wide table with one column per language and an optional ``id`` column
  (MultiJail layout, UTF-8 with or without BOM).

A source string may be a glob pattern, and may end in ``:LANG`` to set the language of a
``.json`` file explicitly, or ``:lang1,lang2`` to pick columns of a ``.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sparse_edit.errors import SparseEditError, reading
from sparse_edit.io.sources import LANG_CODE, split_ids, split_spec

Label = Literal["harmful", "harmless"]
LABELS: tuple[Label, ...] = ("harmful", "harmless")
# Longer prompts are refused when read: a prompt is one request, and a runaway one (a whole
# file pasted into a row) would make the attention allocation explode before any check.
MAX_PROMPT_CHARS = 32_000
# Columns of a wide CSV that are never languages.
_NON_LANGUAGE_COLUMNS = {"id", "source", "tags", "category", "label", "split"}


@dataclass(frozen=True)
class Prompt:
    id: str
    lang: str
    text: str
    label: Label
    # Which source spec it came from (its file name and selection, e.g. ``multiq.jsonl@gpt-51..100``) and the
    # row's ``kind`` where a .jsonl row names one: the groups tune constrains over-refusal in one by one.
    source: str = ""
    kind: str = ""

    @property
    def group(self) -> str:
        """``source`` or ``source/kind``: the prompts whose over-refusal is counted together."""
        return f"{self.source}/{self.kind}" if self.kind else self.source


@dataclass(frozen=True)
class LoadedSource:
    spec: str
    files: tuple[Path, ...]
    sha256: str
    prompts: tuple[Prompt, ...]


def language_from_filename(path: Path) -> str | None:
    parts = path.stem.split("_")
    for part in reversed(parts):
        if re.fullmatch(r"[a-z]{2}", part):
            return part
    return None


def _check_text(text: object, where: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise SparseEditError(f"{where}: text is empty or not a string")
    if len(text) > MAX_PROMPT_CHARS:
        raise SparseEditError(
            f"{where}: prompt has {len(text)} characters, more than the {MAX_PROMPT_CHARS} a prompt may have; "
            "shorten it or drop the row"
        )
    return text


def _expand(pattern: str, flag: str) -> list[Path]:
    matches = sorted(Path(p) for p in glob.glob(pattern))
    if not matches:
        raise SparseEditError(f"{flag}: {pattern} matches no file")
    for path in matches:
        if not path.is_file():
            raise SparseEditError(f"{flag}: {path} is not a file")
    return matches


def _label_of(raw: object, where: str, default: Label) -> Label:
    if raw is None:
        return default
    if raw not in LABELS:
        raise SparseEditError(f"{where}: label must be 'harmful' or 'harmless', got {raw!r}")
    return raw


def _read_jsonl(path: Path, label: Label) -> list[Prompt]:
    prompts = []
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SparseEditError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise SparseEditError(f"{where}: expected an object with id, lang and text")
            missing = [key for key in ("id", "lang", "text") if key not in row]
            if missing:
                raise SparseEditError(f"{where}: missing {', '.join(missing)} (rows need id, lang, text)")
            text = _check_text(row["text"], where)
            lang = str(row["lang"])
            if not LANG_CODE.match(lang):
                raise SparseEditError(
                    f"{where}: lang {lang!r} is not a language code (ISO 639 with optional subtags: en, th, zh-TW)"
                )
            row_label = _label_of(row.get("label"), where, label)
            if row_label != label:
                continue
            kind = row.get("kind")
            prompts.append(Prompt(str(row["id"]), lang, text, label, kind=str(kind) if kind else ""))
    return prompts


def _read_instruction_list(path: Path, lang: str | None, label: Label) -> list[Prompt]:
    lang = lang or language_from_filename(path)
    if lang is None:
        raise SparseEditError(f"{path}: cannot tell the language from the file name; append :LANG, e.g. {path}:th")
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise SparseEditError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(rows, list):
        raise SparseEditError(f"{path}: expected a JSON list of objects with an 'instruction' field")
    prompts = []
    for position, row in enumerate(rows):
        text = row.get("instruction") if isinstance(row, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise SparseEditError(f"{path}: item {position} has no non-empty 'instruction'")
        _check_text(text, f"{path}: item {position}")
        prompts.append(Prompt(str(position), lang, text, label))
    return prompts


def _read_wide_csv(path: Path, langs: list[str] | None, label: Label) -> list[Prompt]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        language_columns = [c for c in columns if c not in _NON_LANGUAGE_COLUMNS and LANG_CODE.match(c)]
        if langs is not None:
            unknown = [lang for lang in langs if lang not in columns]
            if unknown:
                raise SparseEditError(
                    f"{path}: no column for {', '.join(unknown)}; columns are {', '.join(columns)}"
                )
            language_columns = langs
        if not language_columns:
            raise SparseEditError(f"{path}: no language columns (two-letter codes) in the header")
        prompts = []
        for number, row in enumerate(reader, start=2):
            row_id = row.get("id") or str(number - 2)
            for lang in language_columns:
                text = row.get(lang)
                if text is None:
                    raise SparseEditError(f"{path}:{number}: row has fewer columns than the header")
                if text.strip():
                    prompts.append(Prompt(row_id, lang, _check_text(text, f"{path}:{number}"), label))
    return prompts


def load_source(spec: str, label: Label, flag: str) -> LoadedSource:
    """Load one source spec (file, glob, optional ``:LANG`` and ``@IDS`` suffixes) as prompts of ``label``."""
    pattern, langs = split_spec(spec)
    _, ids = split_ids(spec)
    files = _expand(pattern, flag)
    digest = hashlib.sha256()
    prompts: list[Prompt] = []
    for path in files:
        with reading(f"{flag}: {path}"):
            loaded = _read_file(path, spec, langs, label, flag)
            digest.update(path.read_bytes())
        if not loaded:
            raise SparseEditError(f"{flag}: {path}: no {label} prompts in this file")
        if ids is not None:
            loaded = [prompt for prompt in loaded if prompt.id in ids]
            if not loaded:
                raise SparseEditError(f"{flag}: {path}: no {label} prompt has an id in @{ids.text}")
        prompts.extend(loaded)
    name = source_name(spec)
    tagged = tuple(dataclasses.replace(prompt, source=name) for prompt in prompts)
    return LoadedSource(spec, tuple(files), digest.hexdigest(), tagged)


def source_name(spec: str) -> str:
    """A source spec without its folders: ``data/multiq/multiq.jsonl@gpt-1..50`` -> ``multiq.jsonl@gpt-1..50``."""
    return spec.replace("\\", "/").rsplit("/", 1)[-1]


def _read_file(path: Path, spec: str, langs: list[str] | None, label: Label, flag: str) -> list[Prompt]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path, label)
    if suffix == ".json":
        if langs is not None and len(langs) != 1:
            raise SparseEditError(f"{flag}: {spec}: a .json file holds one language; give one :LANG")
        return _read_instruction_list(path, langs[0] if langs else None, label)
    if suffix == ".csv":
        return _read_wide_csv(path, langs, label)
    raise SparseEditError(f"{flag}: {path}: unknown prompt format {suffix!r}; use .jsonl, .json or .csv")


def load_sources(specs: Sequence[str], label: Label, flag: str) -> tuple[list[Prompt], list[LoadedSource]]:
    sources = [load_source(spec, label, flag) for spec in specs]
    prompts = [p for source in sources for p in source.prompts]
    seen: set[tuple[str, str]] = set()
    for prompt in prompts:
        key = (prompt.lang, prompt.id)
        if key in seen:
            raise SparseEditError(f"{flag}: id {prompt.id} appears twice for language {prompt.lang}")
        seen.add(key)
    return prompts, sources


def by_language(prompts: Iterable[Prompt]) -> dict[str, list[Prompt]]:
    groups: dict[str, list[Prompt]] = {}
    for prompt in prompts:
        groups.setdefault(prompt.lang, []).append(prompt)
    return groups


def missing_parallel_ids(prompts: Iterable[Prompt], reference: str) -> dict[str, list[str]]:
    """For every language, the ids present in ``reference`` but missing in that language (and vice versa)."""
    groups = {lang: {p.id for p in items} for lang, items in by_language(prompts).items()}
    ref_ids = groups.get(reference, set())
    report: dict[str, list[str]] = {}
    for lang, ids in groups.items():
        if lang == reference:
            continue
        gaps = sorted(ref_ids.symmetric_difference(ids), key=_id_sort_key)
        if gaps:
            report[lang] = gaps
    return report


def _id_sort_key(value: str) -> tuple[int, int | str]:
    return (0, int(value)) if value.isdigit() else (1, value)


def describe_missing(report: dict[str, list[str]], limit: int = 5) -> str:
    parts = []
    for lang, ids in sorted(report.items()):
        shown = ", ".join(ids[:limit]) + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")
        parts.append(f"{lang}: {shown}")
    return "; ".join(parts)
