"""A prompt source spec and the files it names.

A spec is a path or glob, optionally followed by ``:LANG`` (a .json file's language) or
``:en,th`` (.csv columns), optionally followed by ``@IDS``: the prompt ids to keep, a comma list
of ids and inclusive ranges — ``@100-314``, ``@0-19,42``, ``@gpt-51..100,lmsys-41..80``.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

# ISO 639 code with optional BCP 47 subtags: en, fil, zh-TW, mni-Mtei.
LANG_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


# One item of an id selection: "7", "h3", "100-314", "gpt-51..100".
_NUMERIC_RANGE = re.compile(r"^(\d+)-(\d+)$")
_PREFIXED_RANGE = re.compile(r"^([A-Za-z0-9_-]*?)(\d+)\.\.(\d+)$")
_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # no dots or slashes: "a@b.jsonl" stays a path


class IdSelection:
    """Which prompt ids a source keeps; ``text`` is the selection as written."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.exact: set[str] = set()
        self.ranges: list[tuple[str, int, int]] = []  # (prefix, first, last), inclusive
        for item in (part.strip() for part in text.split(",")):
            numeric, prefixed = _NUMERIC_RANGE.match(item), _PREFIXED_RANGE.match(item)
            if numeric:
                self.ranges.append(("", int(numeric.group(1)), int(numeric.group(2))))
            elif prefixed:
                self.ranges.append((prefixed.group(1), int(prefixed.group(2)), int(prefixed.group(3))))
            elif _ID.match(item):
                self.exact.add(item)
            else:
                raise ValueError(f"{item!r} is not an id or a range of ids")
        if not self.exact and not self.ranges:
            raise ValueError(f"no ids in {text!r}")
        for prefix, first, last in self.ranges:
            if first > last:
                raise ValueError(f"range {prefix}{first}..{last} is empty")

    def __contains__(self, prompt_id: object) -> bool:
        if prompt_id in self.exact:
            return True
        text = str(prompt_id)
        for prefix, first, last in self.ranges:
            number = text[len(prefix) :]
            if text.startswith(prefix) and number.isdigit() and first <= int(number) <= last:
                return True
        return False


def split_ids(spec: str) -> tuple[str, IdSelection | None]:
    """(the spec without its ``@IDS`` suffix, the selection or None). ``@`` not followed by ids is a path."""
    head, sep, tail = spec.rpartition("@")
    if not sep or not head or not tail:
        return spec, None
    try:
        return head, IdSelection(tail)
    except ValueError:
        return spec, None


def split_spec(spec: str) -> tuple[str, list[str] | None]:
    """(pattern, languages named after the last colon or None); an ``@IDS`` suffix is left out."""
    spec, _ = split_ids(spec)
    # "path:th" or "path:en,zh" - but never split a Windows drive letter or a bare path.
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and all(LANG_CODE.match(part) for part in tail.split(",")):
        return head, tail.split(",")
    return spec, None


def source_files(spec: str) -> list[Path]:
    """The files a source spec names (no checks; ``load_source`` reports what is wrong)."""
    pattern, _ = split_spec(spec)
    return sorted(Path(p) for p in glob.glob(pattern)) or [Path(pattern)]
