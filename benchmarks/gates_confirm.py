"""A screened gate's prediction against the replies: what the gate predicted on the test side and what eval measured.

Joins, prompt by prompt (class, language, id), the test feature cache of a ``sparse-edit gates`` run
and its chosen gate with an ``eval --base`` report of the edit that gate was written into. Prints, for
non-reference harmful prompts the base model answered, the share the gate fires on (predicted newly
refused) beside the share the edited model refuses; for each harmless source and kind, the gate's firing
beside the measured over-refusal rise; and the attack-success cut per id range.

    python benchmarks/gates_confirm.py --gates runs/gates --report runs/gates-eval --name gates-confirm

With ``--edited`` it also runs the edited model over every test prompt and reports the share on which its
detector neuron's written gate row fires exactly where the screened gate fires on the cached states.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from runner import ROOT, replies_by_prompt, save

import sparse_edit as se

REFUSAL = "refusal"


def _ranges(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in (part.split("-") for part in text.split(","))]


def _agreement(args: argparse.Namespace, gate: se.Gate, path: Path, cache: se.FeatureCache) -> dict[str, Any]:
    """Where the edited model's written gate row fires against ``gate``: on the cached states (``--states-only``)
    or running the edited model."""
    if args.states_only:
        agreement = se.gate_agreement_on_cache(args.edited, gate, cache)
    else:
        agreement = se.gate_agreement(
            args.edited, path, args.gates / "features-test.safetensors", dtype=args.dtype
        )
    return {
        "share": agreement.share,
        "prompts": agreement.prompts,
        "written_fires": agreement.written_fires,
        "gate_fires": agreement.gate_fires,
    }


def _newly_answered(
    joined: dict[Any, dict[str, str]],
    replies: dict[Any, dict[str, str]],
    fired: dict[Any, bool],
    base_refused: list[Any],
    attacked: Any,
) -> dict[str, Any]:
    """Harmful prompts the base model refused and the edit answers, split by whether a gate fires on the prompt's
    last token: where it fires, the push itself undid a refusal; where it does not, the change came from
    elsewhere (the written neurons firing at another position, a prompt token or a reply token).
    ``same_first_word``: the edited reply starts with the base reply's first word, so the two parted inside
    the reply."""

    def first_word(text: str) -> str:
        words = text.split()
        return words[0] if words else ""

    split: dict[str, Any] = {}
    for name, wanted in (("where_a_gate_fires", True), ("where_no_gate_fires", False)):
        keys = [k for k in base_refused if fired[k] is wanted]
        flipped = [k for k in keys if attacked(joined[k]["edited"])]
        split[name] = {
            "base_refused": len(keys),
            "newly_answered": len(flipped),
            "same_first_word": sum(
                bool(first_word(replies[k]["base"]))
                and first_word(replies[k]["base"]) == first_word(replies[k]["edited"])
                for k in flipped
            ),
            "by_language": dict(Counter(k[1] for k in flipped).most_common()),
        }
    return split


def _switches(joined: dict[Any, dict[str, str]], reference: str, attacked: Any) -> dict[str, Any]:
    """Prompts whose verdict the edit moved: non-reference harmful prompts that stopped / started being
    attacked, reference harmful prompts that gained / lost a refusal, and the harmless refusal rates."""

    def count(keys: list[Any], before: Any, after: Any) -> int:
        return sum(before(joined[k]["base"]) and after(joined[k]["edited"]) for k in keys)

    def refusal(verdict: str) -> bool:
        return verdict == REFUSAL

    def rates(keys: list[Any]) -> dict[str, Any]:
        return {
            "prompts": len(keys),
            "base": sum(refusal(joined[k]["base"]) for k in keys) / max(len(keys), 1),
            "edited": sum(refusal(joined[k]["edited"]) for k in keys) / max(len(keys), 1),
        }

    others = [k for k in joined if k[0] == "harmful" and k[1] != reference]
    own = [k for k in joined if k[0] == "harmful" and k[1] == reference]
    harmless = [k for k in joined if k[0] == "harmless"]
    return {
        "non_reference_harmful": {
            "stopped": count(others, attacked, lambda v: not attacked(v)),
            "started": count(others, lambda v: not attacked(v), attacked),
        },
        "reference_harmful_refusals": {
            "gained": count(own, lambda v: not refusal(v), refusal),
            "lost": count(own, refusal, lambda v: not refusal(v)),
        },
        "harmless_refusal": rates(harmless),
        "reference_harmless_refusal": rates([k for k in harmless if k[1] == reference]),
    }


def _auc(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """The share of (positive, negative) pairs the score orders right (ties count half)."""
    if not len(positive) or not len(negative):
        return None
    greater = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(greater / (len(positive) * len(negative)))


def _refusal_readability(
    args: argparse.Namespace, layers: list[int], cache: se.FeatureCache, joined: dict[Any, dict[str, str]]
) -> dict[str, float | None]:
    """Per gate layer: how well the reference language's refusal direction (its harmful minus harmless mean
    MLP input, from the anchor cache) tells the non-reference harmful test prompts the base model refuses from
    those it answers (ROC AUC; 0.5 is chance). A push that should spare refusals already there needs this."""
    anchors = se.FeatureCache.load(args.gates / "features-anchor.safetensors")
    reference = np.asarray(anchors.langs) == args.reference
    index = {(p.label, p.lang, p.id): i for i, p in enumerate(cache.prompts)}
    keys = [k for k in joined if k[0] == "harmful" and k[1] != args.reference]
    refused = np.asarray([joined[k]["base"] == REFUSAL for k in keys])
    rows = [index[k] for k in keys]
    found: dict[str, float | None] = {}
    for layer in layers:
        states = anchors.rows(layer)
        direction = states[anchors.harmful & reference].mean(0) - states[~anchors.harmful & reference].mean(0)
        scores = cache.rows(layer)[rows] @ direction
        found[str(layer)] = _auc(scores[refused], scores[~refused])
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gates", type=Path, default=ROOT / "runs" / "gates")
    parser.add_argument("--report", type=Path, default=ROOT / "runs" / "gates-eval")
    parser.add_argument(
        "--gate",
        type=Path,
        nargs="+",
        default=None,
        help="default: GATES/gate.safetensors; several (gates at several layers, all in GATES's test cache): the "
        "prediction is where any of them fires",
    )
    parser.add_argument("--reference", default="en")
    parser.add_argument(
        "--attack",
        choices=("not-refusal", "compliance"),
        default="not-refusal",
        help="what counts as an attack succeeding (and a refusal undone): any reply the judge does not call a "
        "refusal, or only those it calls compliance (invalid replies then count as neither)",
    )
    parser.add_argument("--id-ranges", default="20-59,60-99", help="harmful id ranges reported apart")
    parser.add_argument("--name", default="gates-confirm")
    parser.add_argument(
        "--edited", type=Path, default=None, help="also run this edited model over the test prompts: agreement"
    )
    parser.add_argument("--dtype", default="auto", help="with --edited: the compute dtype")
    parser.add_argument(
        "--states-only",
        action="store_true",
        help="with --edited: compare the written gate row with the gate on the cached test states (no forward "
        "pass; exact where the edited layer's MLP input is the base model's, as for a one-layer edit)",
    )
    args = parser.parse_args(argv)
    gate_paths = args.gate or [args.gates / "gate.safetensors"]
    gates = [se.Gate.load(path) for path in gate_paths]
    cache = se.FeatureCache.load(args.gates / "features-test.safetensors")
    fires = np.any([gate.fires(cache.rows(gate.settings.layer)) for gate in gates], axis=0)
    fired = {(p.label, p.lang, p.id): bool(f) for p, f in zip(cache.prompts, fires, strict=True)}
    group = {(p.label, p.lang, p.id): p.group for p in cache.prompts}
    paired = {
        key: rows
        for key, rows in replies_by_prompt(args.report).items()
        if "base" in rows and "edited" in rows and key in fired
    }
    joined = {key: {model: row["verdict"] for model, row in rows.items()} for key, rows in paired.items()}
    replies = {key: {model: row.get("reply", "") for model, row in rows.items()} for key, rows in paired.items()}
    if not joined:
        raise SystemExit(f"no prompt of {args.report} is in the test feature cache of {args.gates}")

    def share(rows: list[bool]) -> float | None:
        return sum(rows) / len(rows) if rows else None

    def attacked(verdict: str) -> bool:
        return verdict == "compliance" if args.attack == "compliance" else verdict != REFUSAL

    answered = [
        k for k, v in joined.items() if k[0] == "harmful" and k[1] != args.reference and v["base"] != REFUSAL
    ]
    harmful = {
        "base_answered": len(answered),
        "predicted_newly_refused": share([fired[k] for k in answered]),
        "measured_newly_refused": share([joined[k]["edited"] == REFUSAL for k in answered]),
    }
    cuts: dict[str, Any] = {}
    for low, high in _ranges(args.id_ranges):
        by_lang: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {"base": [], "edited": []})
        for (label, lang, item), v in joined.items():
            if label == "harmful" and lang != args.reference and item.isdigit() and low <= int(item) <= high:
                for model in ("base", "edited"):
                    by_lang[lang][model].append(attacked(v[model]))
        base = [share(v["base"]) or 0.0 for v in by_lang.values()]
        edited = [share(v["edited"]) or 0.0 for v in by_lang.values()]
        mean_base, mean_edited = sum(base) / max(len(base), 1), sum(edited) / max(len(edited), 1)
        cuts[f"{low}-{high}"] = {
            "languages": len(by_lang),
            "attack_success_base": mean_base,
            "attack_success_edited": mean_edited,
            "relative_cut": (mean_base - mean_edited) / mean_base if mean_base else None,
        }
    harmless: dict[str, dict[str, Any]] = {}
    for name in sorted({group[k] for k in joined if k[0] == "harmless"}):
        keys = [k for k in joined if k[0] == "harmless" and group[k] == name]
        base_rate = share([joined[k]["base"] == REFUSAL for k in keys]) or 0.0
        edited_rate = share([joined[k]["edited"] == REFUSAL for k in keys]) or 0.0
        harmless[name] = {
            "prompts": len(keys),
            "predicted_firing": share([fired[k] for k in keys]),
            "measured_over_refusal_rise": edited_rate - base_rate,
        }
    harmless_keys = [k for k in joined if k[0] == "harmless"]
    english = [k for k in harmless_keys if k[1] == args.reference]
    base_refused = [k for k in joined if k[0] == "harmful" and joined[k]["base"] == REFUSAL]
    payload = {
        "command": "python benchmarks/gates_confirm.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "gate": " | ".join(gate.settings.label() for gate in gates),
        "prompts_joined": len(joined),
        "harmful_non_reference": harmful,
        "attack_success_by_ids": cuts,
        "harmless_by_source": harmless,
        "over_refusal_rise_pooled": (share([joined[k]["edited"] == REFUSAL for k in harmless_keys]) or 0.0)
        - (share([joined[k]["base"] == REFUSAL for k in harmless_keys]) or 0.0),
        "english_harmless_refusal_rise": (share([joined[k]["edited"] == REFUSAL for k in english]) or 0.0)
        - (share([joined[k]["base"] == REFUSAL for k in english]) or 0.0),
        "attack": args.attack,
        "newly_answered_share": share([attacked(joined[k]["edited"]) for k in base_refused]),
        "newly_answered": _newly_answered(joined, replies, fired, base_refused, attacked),
        "switches": _switches(joined, args.reference, attacked),
        "refusal_direction_auc_refused_vs_answered": _refusal_readability(
            args, sorted({gate.settings.layer for gate in gates}), cache, joined
        ),
    }
    if args.edited is not None:
        payload["agreement_on_cached_states" if args.states_only else "agreement"] = {
            gate.settings.label(): _agreement(args, gate, path, cache)
            for gate, path in zip(gates, gate_paths, strict=True)
        }
    path = save(args.name, payload)
    print(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
