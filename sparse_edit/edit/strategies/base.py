"""What a strategy is: the features it reads, the neurons it plans on, and its closed-form solve.

Helpers every strategy shares live here too: the layer's refusal direction, the paired target
points, and the fit/leak diagnostics apply records for a candidate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import torch

from sparse_edit.edit.delta import SliceEdit
from sparse_edit.edit.solver import EditProblem, fit_ratio, leak_ratio
from sparse_edit.model.features import Site
from sparse_edit.options import Options

if TYPE_CHECKING:
    from sparse_edit.edit.layer_data import LayerData
    from sparse_edit.io.checkpoint import Checkpoint
    from sparse_edit.neurons.artifact import LocateArtifact

SettingsT = TypeVar("SettingsT", bound=Options)
F64 = torch.float64
SITE_ORDER: tuple[Site, ...] = ("mlp_input", "neurons", "residual")


@dataclass(frozen=True)
class FeatureNeeds:
    """What a strategy reads at its edit layer, so apply collects it in the shared anchor passes."""

    sites: tuple[Site, ...]  # rows of every anchor group (and the harmless Gram of the key sites)
    neuron_subset: bool = False  # ``neurons`` rows only for the planned neuron set
    harmless_tail_rows: bool = False  # the harmless prompts' last-token rows
    harmless_moments: tuple[Site, ...] = ()  # per-dimension token sums and squares over harmless prompts
    harmless_residual_rows: bool = False  # the harmless prompts' residual rows (not only the reference's)


@dataclass(frozen=True)
class TableRow:
    """A strategy's row of the strategy table (docs/method.md and ``sparse-edit strategies --markdown``)."""

    keys: str  # what the solve reads
    target: str  # what it fits them to
    writes: str  # which weights it writes


@dataclass(frozen=True)
class Tunable:
    """A setting ``sparse-edit tune`` may vary for a strategy: an ApplyOptions field and its range.

    A numeric range (``low``..``high``, sampled on a log scale when ``log``) or a list of ``choices``.
    """

    field: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[int | float | str, ...] = ()


@dataclass
class SolveJob(Generic[SettingsT]):
    """One strategy's solve at one layer of a candidate."""

    layer: int
    data: LayerData
    neurons: torch.Tensor | None  # the planned neuron set (None for strategies that pick their own)
    checkpoint: Checkpoint
    settings: SettingsT  # the strategy's own settings (its ``settings_model`` read off apply's options)
    share: float  # the part of the remaining gap this layer takes (sequential edits)
    # Neurons the other parts of a chain edit at this layer: a strategy that picks its own leaves them out.
    avoid: torch.Tensor | None = None


class Strategy(ABC, Generic[SettingsT]):
    """A way to edit one layer in closed form. Every method gets the strategy's own settings (an instance of
    ``settings_model``), never the whole apply options."""

    name: ClassVar[str]
    # One line: what it edits (``sparse-edit strategies``).
    summary: ClassVar[str]
    # Its row of the strategy table; a strategy without one shows its summary there.
    table_row: ClassVar[TableRow | None] = None
    # The key site whose harmless Gram is stored in the delta for verify's leak check (None: no check).
    gram_site: ClassVar[Site | None]
    # The strategy's own settings (a part of ApplyOptions): its solve reads them through this model.
    settings_model: ClassVar[type[Options]] = Options  # no settings of its own
    # What ``sparse-edit tune`` searches for this strategy (every field is one of ``settings_model``'s).
    search_space: ClassVar[tuple[Tunable, ...]] = ()

    @abstractmethod
    def needs(self, settings: SettingsT) -> FeatureNeeds:
        """The features this strategy reads with these settings."""

    def check(self, checkpoint: Checkpoint) -> None:  # noqa: B027 - most strategies fit every family
        """Refuse a model this strategy cannot edit, before any forward pass."""

    def neurons(
        self, artifact: LocateArtifact, layer: int, settings: SettingsT, reference: str, low_langs: list[str]
    ) -> torch.Tensor | None:
        """The neuron set to edit at ``layer``, from the locate artifact (``reference``: the reference language,
        ``low_langs``: the languages edited for); None if the strategy picks its own."""
        return None

    @abstractmethod
    def solve(self, job: SolveJob[SettingsT]) -> tuple[list[SliceEdit], dict[str, Any]]:
        """The slice edits at ``job.layer`` and their diagnostics."""


def refusal_direction(data: LayerData) -> torch.Tensor:
    """Unit vector from the reference language's harmless to its harmful mean of the layer output."""
    assert data.ref_harmless_residual is not None
    direction = data.ref_rows["residual"].to(F64).mean(0) - data.ref_harmless_residual.to(F64).mean(0)
    return direction / direction.norm().clamp(min=1e-12)


def target_points(data: LayerData, site: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(low-resource keys, their reference-language targets): paired by id, or the reference class mean."""
    low_idx, ref_idx = data.pairs
    keys = data.low_rows[site][low_idx].to(F64)
    if ref_idx:
        return keys, data.ref_rows[site][ref_idx].to(F64)
    return keys, data.ref_rows[site].to(F64).mean(0, keepdim=True).expand_as(keys)


def shift_ratio(
    rows: torch.Tensor | None, harmful: EditProblem, delta: torch.Tensor, direction: torch.Tensor
) -> float | None:
    """Mean shift the edit puts on ``rows`` (keys) along the refusal direction, relative to the mean
    shift harmful rows are asked for (0 = untouched; 1 = pushed as far as harmful prompts should go)."""
    wanted = float((harmful.targets @ direction).mean()) if harmful.targets.shape[0] else 0.0
    if rows is None or not rows.shape[0] or wanted <= 0:
        return None
    return float((rows.to(F64) @ delta @ direction).mean()) / wanted


def solve_diagnostics(
    rank: int,
    jitter: float,
    nullspace_dim: int | None,
    train: EditProblem,
    delta: torch.Tensor,
    w_s: torch.Tensor,
    data: LayerData,
    site: str,
) -> dict[str, Any]:
    """Fit and leak on the training anchors, and the update's size relative to the edited weights."""
    return {
        "rank": rank,
        "jitter": jitter,
        "nullspace_dim": nullspace_dim,
        "anchors_train": int(train.keys.shape[0]),
        "fit_train": fit_ratio(train.keys, train.targets, delta),
        "leak_train": leak_ratio(data.harmless_gram[site], delta, w_s),
        "relative_norm": float(delta.norm() / w_s.norm()) if float(w_s.norm()) > 0 else 0.0,
    }
