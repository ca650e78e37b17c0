"""The files a tune folder holds: pareto.json, pareto.md, pareto.png, chosen.toml and the front's apply configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomli_w

from sparse_edit.io.layout import (
    CHOSEN_CONFIG,
    FRONT_CONFIGS,
    PARETO_JSON,
    PARETO_MARKDOWN,
    PARETO_PLOT,
    TUNE_KIND,
)
from sparse_edit.tuning.front import Constraints, TrialRow


def trial_config(apply_settings: dict[str, Any], row: TrialRow, study_folder: Path) -> str:
    """An apply config (TOML) that writes one trial's edit: every setting, explicit."""
    outcome = row.outcome
    header = [
        f"# The edit of trial {row.number} of the tune study in {study_folder}.",
        f"# Dev: attack success {outcome['attack_success']:.3f}, over-refusal {outcome['over_refusal']:+.3f}, "
        f"KL {outcome['kl']:.4f}, newly answered {outcome['newly_answered']}, "
        f"newly invalid {outcome.get('newly_invalid', 0)}.",
        "#   sparse-edit apply --config THIS_FILE -o EDITED",
        "",
    ]
    return "\n".join(header) + tomli_w.dumps(apply_settings)


def markdown(payload: dict[str, Any]) -> str:
    """The study as a table, best dev attack success first; the front and the chosen trial marked."""
    base = payload["base"]
    lines = [
        "# sparse-edit tune",
        "",
        f"Dev split only: {payload['dev']['harmful']} harmful prompts ({', '.join(payload['dev']['low_langs'])} "
        f"and the reference), {payload['dev']['harmless']} harmless prompts; replies of {payload['settings']['max_new_tokens']} "
        "tokens, keyword judge. Over-refusal is the pooled harmless refusal rate minus the base model's; the worst "
        "group is the harmless source (and kind) where it rose most. Parity: the share of low-resource dev prompts "
        "refused exactly when the base model refuses their reference-language version (base: "
        f"{base.get('parity', 0):.3f}). Reference moved: reference-language dev verdicts the edit changed.",
        "",
        f"Base model: dev attack success {base['attack_success']:.3f}, harmless refusal {base['harmless_refusal']:.3f}.",
        "",
        f"Choice rule: {payload['choice_rule']}.",
        "",
    ]
    chosen = payload["chosen"]
    if chosen is None:
        lines += ["**No trial qualifies**: loosen a limit or run more trials.", ""]
    else:
        lines += [f"Chosen: trial {chosen} (see chosen.toml).", ""]
    if payload["front"]:
        lines += [f"Every trial on the front has its apply config in {FRONT_CONFIGS}/trial-N.toml.", ""]
    lines += [
        "| trial | edit | attack success | over-refusal | worst group | parity | reference moved | KL | newly answered "
        "| newly refused | newly invalid | params | |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    front = set(payload["front"])
    for trial in sorted(payload["trials"], key=lambda t: (t["outcome"]["attack_success"], t["number"])):
        o = trial["outcome"]
        marks = ("chosen " if trial["number"] == chosen else "") + ("front" if trial["number"] in front else "")
        groups = o.get("over_refusal_by_group") or {}
        worst = max(groups.items(), key=lambda item: (item[1], item[0])) if groups else None
        moved = o.get("reference_refusals_gained", 0) + o.get("reference_refusals_lost", 0)
        lines.append(
            f"| {trial['number']} | {trial['label']} | {o['attack_success']:.3f} ± {o.get('attack_success_se', 0):.3f} "
            f"| {o['over_refusal']:+.3f} | {f'{worst[1]:+.3f} ({worst[0]})' if worst else '-'} | "
            f"{o.get('parity', 0):.3f} | {moved} | {o['kl']:.4f} | {o['newly_answered']} | {o['newly_refused']} | "
            f"{o.get('newly_invalid', '-')} | {o['changed_parameters']} | {marks.strip()} |"
        )
    lines += _screen_table(payload["trials"])
    return "\n".join(lines) + "\n"


def _screen_table(trials: list[dict[str, Any]]) -> list[str]:
    """For trials of a screened gate (--candidate-gates): what the screen predicted beside the dev replies."""
    screened = [t for t in trials if t.get("screen")]
    if not screened:
        return []
    lines = [
        "",
        "Screened gates: the screen's out-of-fold prediction on the anchors (harmful caught, non-reference mean; "
        "firing on the worst harmless source) beside the dev replies (newly refused share of harmful prompts the "
        "base answered; over-refusal rise, pooled).",
        "",
        "| trial | gate | predicted caught | predicted worst firing | dev newly refused | dev over-refusal |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for trial in sorted(screened, key=lambda t: t["number"]):
        screen, outcome = trial["screen"], trial["outcome"]
        answered = max(outcome.get("base_answered", 0), 1)
        lines.append(
            f"| {trial['number']} | {Path(trial['settings']['detector_gate']).name} | "
            f"{screen['catch_non_reference']:.3f} | {screen['firing_max']:.3f} | "
            f"{outcome['newly_refused'] / answered:.3f} | {outcome['over_refusal']:+.3f} |"
        )
    return lines


def plot(payload: dict[str, Any], path: Path) -> bool:
    """Attack success vs over-refusal, one point per trial, the front and the chosen trial marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    trials = payload["trials"]
    front = set(payload["front"])
    fig, ax = plt.subplots(figsize=(6, 4.5))

    def points(selected: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        return (
            [100 * t["outcome"]["over_refusal"] for t in selected],
            [100 * t["outcome"]["attack_success"] for t in selected],
        )

    constraints = Constraints.of(payload["settings"])
    feasible = [t for t in trials if constraints.satisfied(t["outcome"])]
    infeasible = [t for t in trials if not constraints.satisfied(t["outcome"])]
    ax.scatter(*points(feasible), s=18, color="0.6", label="trial")
    if infeasible:
        ax.scatter(
            *points(infeasible),
            s=18,
            facecolors="none",
            edgecolors="0.5",
            label="answers what base refused, or breaks replies",
        )
    ax.scatter(*points([t for t in trials if t["number"] in front]), s=30, color="tab:blue", label="Pareto front")
    chosen = [t for t in trials if t["number"] == payload["chosen"]]
    if chosen:
        ax.scatter(*points(chosen), s=120, facecolors="none", edgecolors="tab:red", linewidths=2, label="chosen")
    ax.scatter([0.0], [100 * payload["base"]["attack_success"]], marker="x", color="black", label="base model")
    ax.axvline(100 * payload["settings"]["max_over_refusal"], color="tab:red", linestyle=":", linewidth=1)
    ax.set_xlabel("dev over-refusal rise (points)")
    ax.set_ylabel("dev attack success, low-resource mean (%)")
    ax.set_title("sparse-edit tune (dev split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_files(
    folder: Path, payload: dict[str, Any], chosen_toml: str | None, front_tomls: dict[int, str] | None = None
) -> list[str]:
    """pareto.json, pareto.md, pareto.png (with matplotlib), chosen.toml (when a trial qualifies) and
    front/trial-N.toml for every trial on the front, so another point of it is one apply away."""
    (folder / PARETO_JSON).write_text(json.dumps({"kind": TUNE_KIND, **payload}, indent=2, sort_keys=True) + "\n")
    (folder / PARETO_MARKDOWN).write_text(markdown(payload), encoding="utf-8")
    written = [PARETO_JSON, PARETO_MARKDOWN]
    if plot(payload, folder / PARETO_PLOT):
        written.append(PARETO_PLOT)
    if chosen_toml is not None:
        (folder / CHOSEN_CONFIG).write_text(chosen_toml, encoding="utf-8")
        written.append(CHOSEN_CONFIG)
    if front_tomls:
        (folder / FRONT_CONFIGS).mkdir()
        for number, text in sorted(front_tomls.items()):
            (folder / FRONT_CONFIGS / f"trial-{number}.toml").write_text(text, encoding="utf-8")
        written.append(FRONT_CONFIGS)
    return written
