"""A study's result: its trials, the Pareto front and the choice rule (the files it is written to: ``study_files``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
