"""Refusal markers per language (data files in ``sparse_edit/data/refusal``) and the log-odds proxy."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import torch

REFERENCE = "en"  # English markers are always checked too: models often refuse in English.


@dataclass(frozen=True)
class Markers:
    phrases: tuple[str, ...]
    openings: tuple[str, ...]


def _data_dir() -> Any:
    return resources.files("sparse_edit") / "data" / "refusal"


@cache
def marker_languages() -> tuple[str, ...]:
    return tuple(sorted(entry.name[:-4] for entry in _data_dir().iterdir() if entry.name.endswith(".txt")))


@cache
def markers(lang: str) -> Markers:
    """Markers of ``lang`` plus the English ones (empty extra set for a language without a file)."""
    phrases: list[str] = []
    openings: list[str] = []
    for code in dict.fromkeys([REFERENCE, lang]):
        if code not in marker_languages():
            continue
        for line in (_data_dir() / f"{code}.txt").read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            phrase = line.lstrip("^")
            phrases.append(phrase)
            if line.startswith("^"):
                openings.append(phrase)
    return Markers(tuple(phrases), tuple(openings))


@cache
def own_phrases(lang: str) -> tuple[str, ...]:
    """The markers of ``lang`` alone, without the English ones (empty for English or no file)."""
    if lang == REFERENCE or lang not in marker_languages():
        return ()
    english = set(markers(REFERENCE).phrases)
    return tuple(phrase for phrase in markers(lang).phrases if phrase not in english)


def opening_token_ids(tokenizer: Any, lang: str) -> list[int]:
    """First tokens of the refusal openings of ``lang`` (and English), with and without a leading space."""
    ids: set[int] = set()
    for opening in markers(lang).openings:
        for variant in (opening, " " + opening):
            encoded = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if encoded:
                ids.add(int(encoded[0]))
    return sorted(ids)


def refusal_log_odds(last_logits: torch.Tensor, token_ids: list[list[int]]) -> torch.Tensor:
    """log(p / (1 - p)) where p is the next-token probability mass on each row's refusal openings."""
    log_probs = torch.log_softmax(last_logits.float(), dim=-1)
    values = []
    for row, ids in enumerate(token_ids):
        log_p = torch.logsumexp(log_probs[row, ids], dim=0).clamp(max=-1e-7)
        values.append(log_p - torch.log1p(-log_p.exp()))
    return torch.stack(values)
