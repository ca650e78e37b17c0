"""The gates report: the ceiling per layer and language as a markdown table and a heat map."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.0f}"


def _languages(payload: dict[str, Any], side: str, key: str) -> list[str]:
    langs: set[str] = set()
    for entry in payload["ceiling"]["layers"].values():
        langs |= set(entry.get(side, {}).get(key, {}).get("catch", {}))
    return sorted(langs)


def _table(payload: dict[str, Any], side: str, key: str, title: str) -> list[str]:
    langs = _languages(payload, side, key)
    if not langs:
        return []
    lines = [
        f"### {title}",
        "",
        "| layer | " + " | ".join(langs) + " | non-ref mean | worst harmless source |",
        "|---|" + "---|" * (len(langs) + 2),
    ]
    for layer, entry in payload["ceiling"]["layers"].items():
        figures = entry.get(side, {}).get(key)
        if figures is None:
            continue
        cells = [_pct(figures["catch"].get(lang)) for lang in langs]
        worst = max(figures["firing"].items(), key=lambda item: item[1], default=("—", 0.0))
        lines.append(
            f"| {layer} | " + " | ".join(cells) + f" | {_pct(figures['catch_non_reference'])} | "
            f"{worst[0]} {100 * worst[1]:.1f} % |"
        )
    return [*lines, ""]


def _auc_table(payload: dict[str, Any], side: str) -> list[str]:
    langs: set[str] = set()
    for entry in payload["ceiling"]["layers"].values():
        langs |= set(entry.get(side, {}).get("auc", {}))
    if not langs:
        return []
    ordered = sorted(langs)
    lines = [
        f"### ROC AUC, harmful in each language against every harmless prompt ({side} side)",
        "",
        "| layer | " + " | ".join(ordered) + " |",
        "|---|" + "---|" * len(ordered),
    ]
    for layer, entry in payload["ceiling"]["layers"].items():
        auc = entry.get(side, {}).get("auc", {})
        lines.append(
            f"| {layer} | " + " | ".join("—" if lang not in auc else f"{auc[lang]:.3f}" for lang in ordered) + " |"
        )
    return [*lines, ""]


def markdown(payload: dict[str, Any]) -> str:
    limit = payload["ceiling"]["max_firing"]
    anchors = payload["anchors"]
    lines = [
        "# What a gate can do, per layer and language",
        "",
        f"Anchors: {anchors['harmful']} harmful and {anchors['harmless']} harmless prompts; figures on the anchor "
        "side are out of fold (thresholds set on out-of-fold scores, prompt ids kept within one fold). Cells: % of "
        f"harmful prompts caught with every harmless source (and kind) at or under {100 * limit:g} % firing. "
        "`per language (read)` is what a gate written into a neuron computes: the language read from the state.",
        "",
        f"Screen: {payload['screen']['candidates']} candidates in {payload['screen']['seconds']:.1f} s.",
        "",
    ]
    exempt = payload["settings"].get("limit_exempt")
    if exempt:
        lines += [
            f"Left out of the firing limit (`--limit-exempt {','.join(exempt)}`): every harmless group whose name "
            "contains one of these. Their firing is still counted in the tables but no longer bounds the threshold.",
            "",
        ]
    sides = [("anchor", "anchor side, out of fold")]
    if payload.get("test"):
        sides.append(("test", "test side, gates fitted on the anchors"))
    for side, name in sides:
        lines += _auc_table(payload, side)
        lines += _table(payload, side, "global", f"One global threshold ({name})")
        if side == "anchor":
            lines += _table(
                payload,
                side,
                "per_language_label",
                f"One threshold per language, by label ({name}; an upper bound)",
            )
        lines += _table(
            payload, side, "per_language_read", f"One threshold per language, read from the state ({name})"
        )
    chosen = payload.get("chosen")
    if chosen is None:
        lines.append(f"No gate keeps every harmless anchor source at or under {100 * limit:g} %.")
    else:
        predicted = chosen["predicted"]
        lines.append(
            f"Chosen gate: `{chosen['label']}`: anchors (out of fold) catch {_pct(predicted['catch_non_reference'])} % "
            f"of non-reference harmful prompts, worst harmless source {100 * predicted['firing_max']:.1f} %."
        )
        if "test" in chosen:
            test = chosen["test"]
            lines.append(
                f"On the test side: {_pct(test['catch_non_reference'])} % caught, worst harmless source "
                f"{100 * test['firing_max']:.1f} %, pooled {100 * test['firing_pooled']:.1f} %."
            )
    lines += _limiting(payload.get("limiting"), limit)
    return "\n".join(lines) + "\n"


def _limiting(limiting: dict[str, Any] | None, limit: float) -> list[str]:
    """What holds the chosen gate back: each harmless source's limit lifted in turn, then every limit loosened."""
    if not limiting:
        return []
    lines = [
        "",
        f"### What limits `{limiting['label']}` (anchor side, out of fold)",
        "",
        f"Non-reference harmful caught: {_pct(limiting['catch_non_reference'])} % with every harmless source at or "
        f"under {100 * limit:g} %. Each row leaves one source out of the threshold rule.",
        "",
        "| harmless source left out | caught | its firing then |",
        "|---|---:|---:|",
    ]
    for group, entry in limiting["lifted"].items():
        lines.append(f"| {group} | {_pct(entry['catch_non_reference'])} % | {100 * entry['firing']:.1f} % |")
    lines += ["", "| every source's limit | caught |", "|---:|---:|"]
    lines += [f"| {100 * float(key):g} % | {_pct(value)} % |" for key, value in limiting["looser"].items()]
    return lines


def write_heatmap(payload: dict[str, Any], path: Path) -> bool:
    """Layers × languages of the per-language (read) catch, anchor side and, if present, test side; False
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sides = [s for s in ("anchor", "test") if _languages(payload, s, "per_language_read")]
    if not sides:
        return False
    figure, axes = plt.subplots(1, len(sides), figsize=(6 * len(sides), 4), squeeze=False)
    layers = list(payload["ceiling"]["layers"])
    for axis, side in zip(axes[0], sides, strict=True):
        langs = _languages(payload, side, "per_language_read")
        grid = [
            [
                payload["ceiling"]["layers"][layer]
                .get(side, {})
                .get("per_language_read", {})
                .get("catch", {})
                .get(lang, math.nan)
                for lang in langs
            ]
            for layer in layers
        ]
        image = axis.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        axis.set_xticks(range(len(langs)), langs)
        axis.set_yticks(range(len(layers)), layers)
        axis.set_xlabel("language")
        axis.set_ylabel("layer")
        axis.set_title(f"harmful caught, per-language gate ({side} side)")
        figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
