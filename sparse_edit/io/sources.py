"""A prompt source spec (``path``, ``glob``, ``path:LANG`` or ``table.csv:en,th``) and the files it names."""

from __future__ import annotations

import glob
import re
from pathlib import Path

# ISO 639 code with optional BCP 47 subtags: en, fil, zh-TW, mni-Mtei.
LANG_CODE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def split_spec(spec: str) -> tuple[str, list[str] | None]:
    """(pattern, languages named after the last colon or None)."""
    # "path:th" or "path:en,zh" - but never split a Windows drive letter or a bare path.
    head, sep, tail = spec.rpartition(":")
    if sep and head and tail and all(LANG_CODE.match(part) for part in tail.split(",")):
        return head, tail.split(",")
    return spec, None


def source_files(spec: str) -> list[Path]:
    """The files a source spec names (no checks; ``load_source`` reports what is wrong)."""
    pattern, _ = split_spec(spec)
    return sorted(Path(p) for p in glob.glob(pattern)) or [Path(pattern)]
