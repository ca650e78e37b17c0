"""The search space: strategies and layers, plus the settings every strategy declares searchable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_edit.edit import strategies
from sparse_edit.edit.strategies.base import Tunable
from sparse_edit.errors import SparseEditError

if TYPE_CHECKING:
    import optuna

    from sparse_edit.io.checkpoint import Checkpoint
    from sparse_edit.options import TuneOptions


# What a trial with a screened gate still searches: how strongly the neuron pushes, and how hard its threshold is.
GATE_OUTPUT_SETTINGS = ("gain", "detector_sharpness")


def default_layers(num_layers: int) -> list[int]:
    """Every layer from L/3 to L-2: where earlier measurements found the refusal decision."""
    return list(range(num_layers // 3, max(num_layers - 1, num_layers // 3 + 1)))


@dataclass(frozen=True)
class SearchSpace:
    strategies: tuple[str, ...]
    layers: tuple[int, ...]
    max_edit_layers: int = 1  # layers one trial may edit, one after another
    positions: tuple[int, ...] = ()  # anchor rows per prompt to choose from (empty: --positions, fixed)
    gates: tuple[tuple[str, int], ...] = ()  # (gate file, its layer): trials pick one (--candidate-gates)

    @classmethod
    def for_model(
        cls, options: TuneOptions, checkpoint: Checkpoint, num_layers: int
    ) -> tuple[SearchSpace, list[str]]:
        """The space for this model and the strategies left out (with why): those that cannot edit it."""
        if options.candidate_gates:
            return cls.of_gates(options, checkpoint), []
        kept, skipped = [], []
        for name in options.strategy:
            try:
                for part in strategies.chain_parts(name):
                    strategies.get(part).check(checkpoint)
            except SparseEditError as exc:
                skipped.append(f"{name}: {exc}")
                continue
            kept.append(name)
        if not kept:
            raise SparseEditError(f"--strategy: no strategy can edit this model ({'; '.join(skipped)})")
        layers = options.candidate_layers
        chosen = sorted(set(layers)) if layers else default_layers(num_layers)
        outside = [layer for layer in chosen if not 0 <= layer < num_layers]
        if outside:
            raise SparseEditError(f"--candidate-layers {outside[0]}: the model has layers 0..{num_layers - 1}")
        positions = tuple(sorted(set(options.candidate_positions or ())))
        return cls(tuple(kept), tuple(chosen), options.max_edit_layers, positions), skipped

    @classmethod
    def of_gates(cls, options: TuneOptions, checkpoint: Checkpoint) -> SearchSpace:
        """Trials of the detector with one of ``--candidate-gates`` each, at that gate's layer."""
        from sparse_edit.gates.gate import Gate

        strategies.get("detector").check(checkpoint)
        gates = tuple(
            (str(path), Gate.load(path, "--candidate-gates").settings.layer)
            for path in options.candidate_gates or []
        )
        return cls(("detector",), tuple(sorted({layer for _, layer in gates})), gates=gates)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Apply settings for one trial: a strategy, a layer set and that strategy's searchable settings."""
        if self.gates:
            return self._suggest_gate(trial)
        name = str(trial.suggest_categorical("strategy", list(self.strategies)))
        settings: dict[str, Any] = {"strategy": [name], "layer": self._suggest_layers(trial)}
        if self.positions:
            settings["positions"] = int(trial.suggest_categorical("positions", list(self.positions)))
        for tunable in searchable(name):
            settings[tunable.field] = _suggest(trial, f"{name}.{tunable.field}", tunable)
        return settings

    def _suggest_gate(self, trial: optuna.Trial) -> dict[str, Any]:
        """A screened gate and the detector's output settings; the gate fixes the layer and when it fires."""
        path = str(trial.suggest_categorical("detector_gate", [path for path, _ in self.gates]))
        settings: dict[str, Any] = {
            "strategy": ["detector"],
            "layer": str(dict(self.gates)[path]),
            "detector_gate": path,
        }
        for tunable in searchable("detector"):
            if tunable.field in GATE_OUTPUT_SETTINGS:
                settings[tunable.field] = _suggest(trial, f"detector.{tunable.field}", tunable)
        return settings

    def _suggest_layers(self, trial: optuna.Trial) -> str:
        """How many layers (up to ``max_edit_layers``), then each of them: ``"18"`` or ``"16,18"``.

        The count comes first so that one-layer edits keep an even share of the random start; a repeated
        layer adds nothing.
        """
        count = trial.suggest_int("edit_layers", 1, self.max_edit_layers) if self.max_edit_layers > 1 else 1
        chosen = {int(trial.suggest_categorical("layer", list(self.layers)))}
        for extra in range(2, count + 1):
            chosen.add(int(trial.suggest_categorical(f"layer_{extra}", list(self.layers))))
        return ",".join(map(str, sorted(chosen)))


def searchable(name: str) -> list[Tunable]:
    """What the search varies for a strategy or chain: its parts' settings, a setting they share once (the
    first part's range)."""
    tunables: dict[str, Tunable] = {}
    for part in strategies.chain_parts(name):
        for tunable in strategies.get(part).search_space:
            tunables.setdefault(tunable.field, tunable)
    return list(tunables.values())


def _suggest(trial: optuna.Trial, key: str, tunable: Tunable) -> Any:
    # Parameters are named per strategy: the same field may have another range in another strategy.
    if tunable.choices:
        return trial.suggest_categorical(key, list(tunable.choices))
    return trial.suggest_float(key, tunable.low, tunable.high, log=tunable.log)


def describe(settings: dict[str, Any]) -> str:
    """``output@16 gain=4.2 max_edit_neurons=128 ...`` for a progress line."""
    rest = " ".join(
        f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in settings.items()
        if key not in ("strategy", "layer")
    )
    return f"{settings['strategy'][0]}@{settings['layer']} {rest}".strip()
