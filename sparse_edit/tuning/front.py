"""A study's result: its trials, the Pareto front, the choice rule, and the files a tune folder holds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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

OBJECTIVES = ("attack_success", "over_refusal", "kl", "parity_miss")
CHOICE_RULE = (
    "among finished trials whose pooled dev over-refusal rise is at most --max-over-refusal, whose rise in every "
    "harmless source and kind is at most --max-over-refusal-per-group, whose harmless KL is at most --kl-budget, "
    "and that keep the constraints (--max-newly-answered, --max-newly-invalid, --max-changed-share, "
    "--max-reference-change): the trials whose dev attack success is within one standard error of the lowest "
    "(a smaller dev difference is noise), and of those the one with the lowest over-refusal, then the best parity "
    "with the reference language, then the fewest changed parameters, then the lowest KL, then the earliest"
)

NONE_QUALIFIES = (
    "no trial qualifies under --max-over-refusal, --max-over-refusal-per-group, --kl-budget, --max-newly-answered, "
    "--max-newly-invalid, --max-changed-share and --max-reference-change"
)


@dataclass(frozen=True)
class Constraints:
    """What makes a trial infeasible: the share of dev harmful prompts it newly answers (the base refused them),
    the share of dev prompts whose valid base reply it breaks (a loop, another script, nothing), the share of
    the checkpoint's parameters it changes, and the share of reference-language dev prompts whose verdict it
    moves (the reference language is the behaviour the edit copies; it should not change itself)."""

    max_newly_answered: float
    max_newly_invalid: float = 1.0
    max_changed_share: float = 1.0
    max_reference_change: float = 1.0

    @classmethod
    def of(cls, settings: Mapping[str, Any]) -> Constraints:
        return cls(
            float(settings["max_newly_answered"]),
            float(settings.get("max_newly_invalid", 1.0)),
            float(settings.get("max_changed_share", 1.0)),
            float(settings.get("max_reference_change", 1.0)),
        )

    def excess(self, outcome: Mapping[str, Any]) -> list[float]:
        """How far each limit is exceeded (> 0) or kept (<= 0): Optuna's constraint convention."""
        return [
            float(outcome.get("newly_answered_share", 1.0)) - self.max_newly_answered,
            float(outcome.get("newly_invalid_share", 0.0)) - self.max_newly_invalid,
            float(outcome.get("changed_share", 0.0)) - self.max_changed_share,
            float(outcome.get("reference_changed_share", 0.0)) - self.max_reference_change,
        ]

    def satisfied(self, outcome: Mapping[str, Any]) -> bool:
        return all(value <= 0 for value in self.excess(outcome))


@dataclass(frozen=True)
class TrialRow:
    """One finished trial: its number, the apply settings it varied, and its dev outcome."""

    number: int
    settings: dict[str, Any]
    outcome: dict[str, Any]
    seconds: float
    worker: str = ""  # host:pid of the process that ran it
    phase_seconds: dict[str, float] = field(default_factory=dict)  # where its time went
    screen: dict[str, Any] | None = None  # a screened gate's predicted figures (tune --candidate-gates)

    def objectives(self) -> tuple[float, ...]:
        return tuple(float(self.outcome.get(name, 0.0)) for name in OBJECTIVES)

    def feasible(self, constraints: Constraints) -> bool:
        return constraints.satisfied(self.outcome)


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def pareto_front(rows: list[TrialRow], constraints: Constraints) -> list[TrialRow]:
    """The feasible trials no other feasible trial beats on every objective and on size (lower is better).

    Size counts as the choice rule's tie-break does, so the chosen trial is always on the front.
    """
    feasible = [row for row in rows if row.feasible(constraints)]

    def key(row: TrialRow) -> tuple[float, ...]:
        return (*row.objectives(), float(row.outcome.get("changed_parameters", 0)))

    return [row for row in feasible if not any(dominates(key(other), key(row)) for other in feasible)]


@dataclass(frozen=True)
class Choice:
    """The choice rule's limits: pooled over-refusal rise, the rise in any one harmless source/kind group (None:
    the pooled limit), and harmless KL."""

    max_over_refusal: float
    kl_budget: float
    max_over_refusal_per_group: float | None = None

    def qualifies(self, outcome: Mapping[str, Any]) -> bool:
        group_limit = (
            self.max_over_refusal if self.max_over_refusal_per_group is None else self.max_over_refusal_per_group
        )
        groups = outcome.get("over_refusal_by_group", {}).values()
        return (
            float(outcome["over_refusal"]) <= self.max_over_refusal
            and all(float(rise) <= group_limit for rise in groups)
            and float(outcome["kl"]) <= self.kl_budget
        )


def choose(rows: list[TrialRow], choice: Choice, constraints: Constraints) -> TrialRow | None:
    """The choice rule (``CHOICE_RULE``); None when no trial qualifies.

    A one-standard-error rule: trials whose dev attack success is within one standard error of the best are
    tied (dev sets are small; a smaller difference says nothing about the test side), and among them the rule
    takes the one that costs least on harmless prompts.
    """
    qualifying = [row for row in rows if row.feasible(constraints) and choice.qualifies(row.outcome)]
    if not qualifying:
        return None
    best = min(qualifying, key=lambda row: (float(row.outcome["attack_success"]), row.number))
    within = float(best.outcome["attack_success"]) + float(best.outcome.get("attack_success_se", 0.0))
    tied = [row for row in qualifying if float(row.outcome["attack_success"]) <= within + 1e-12]
    return min(
        tied,
        key=lambda row: (
            float(row.outcome["over_refusal"]),
            -float(row.outcome.get("parity", 0.0)),
            int(row.outcome.get("changed_parameters", 0)),
            float(row.outcome["kl"]),
            row.number,
        ),
    )


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
