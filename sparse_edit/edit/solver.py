"""The closed-form, rank-constrained, null-space-regularised edit (method step 2, Thm 4.1).

General key/value form: find ``ΔW`` ([d_in, m]) minimising

    (1/N)·‖K ΔW − V‖² + (γ/N_s)·tr(ΔWᵀ G ΔW) + λ·(tr(KᵀK)/(N·d_in))·‖ΔW‖²   s.t. rank(ΔW) ≤ r

where ``K`` ([N, d_in]) are keys (e.g. pooled MLP inputs of low-resource harmful prompts),
``V`` ([N, m]) the target shifts, and ``G = Σ x xᵀ`` over ``N_s`` preserved inputs
(harmless tokens). Dividing by ``N`` and ``N_s`` and scaling λ by the mean key energy makes
γ and λ comparable across models and data sizes. Everything runs in float64.

With ``Q = KᵀK/N + γ G/N_s + λ' I = RᵀR`` the objective equals ``‖R ΔW − R M‖² + const``
for the ridge solution ``M = Q⁻¹ KᵀV/N``, so the best rank-r ``ΔW`` is ``R⁻¹`` times the
truncated SVD of ``R M``.

``nullspace="hard"`` instead restricts ``ΔW`` to the eigenvectors of ``G/N_s`` whose
eigenvalues are below ``threshold × largest eigenvalue`` (and keeps the γ penalty inside it):
preserved inputs are then (nearly) exactly untouched, at the price of a weaker fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from sparse_edit.errors import SparseEditError

NullSpace = Literal["soft", "hard"]
_F64 = torch.float64


@dataclass(frozen=True)
class EditProblem:
    keys: torch.Tensor  # [N, d_in]
    targets: torch.Tensor  # [N, m]
    preserve_gram: torch.Tensor  # [d_in, d_in], Σ x xᵀ
    preserve_count: int  # N_s


@dataclass(frozen=True)
class SolveSettings:
    gamma: float = 1.0
    lam: float = 1e-2
    rank: int = 32
    nullspace: NullSpace = "soft"
    threshold: float = 1e-3


@dataclass
class Solution:
    left: torch.Tensor  # [d_in, r]
    right: torch.Tensor  # [r, m]
    jitter: float = 0.0
    nullspace_dim: int | None = None
    singular_values: list[float] = field(default_factory=list)

    @property
    def delta(self) -> torch.Tensor:
        return self.left @ self.right

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])


def _cholesky_with_jitter(q: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Upper factor R with Q = RᵀR; on failure retry with growing diagonal jitter."""
    scale = float(torch.trace(q)) / q.shape[0] or 1.0
    jitter = 0.0
    for attempt in range(8):
        factor, info = torch.linalg.cholesky_ex(q + jitter * torch.eye(q.shape[0], dtype=_F64))
        if int(info) == 0:
            return factor.T, jitter
        jitter = scale * 10.0 ** (attempt - 10)
    raise SparseEditError("the edit's normal matrix is not positive definite even with jitter; raise --lam")


def _whitened_truncation(
    q: torch.Tensor, rhs: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor, float, list[float]]:
    upper, jitter = _cholesky_with_jitter(q)
    ridge = torch.cholesky_solve(rhs, upper.T)  # Q⁻¹ rhs
    u, s, vh = torch.linalg.svd(upper @ ridge, full_matrices=False)
    keep = min(rank, int((s > s.max() * 1e-12).sum()) if s.numel() else 0) or 1
    left = torch.linalg.solve_triangular(upper, u[:, :keep] * s[:keep], upper=True)
    return left, vh[:keep], jitter, s[:keep].tolist()


def scales(problem: EditProblem, settings: SolveSettings) -> tuple[float, float, float]:
    """(a, b, c) in Q = a·KᵀK + b·G + c·I."""
    n = max(problem.keys.shape[0], 1)
    d = problem.keys.shape[1]
    a = 1.0 / n
    b = settings.gamma / max(problem.preserve_count, 1)
    key_energy = float((problem.keys.to(_F64) ** 2).sum()) / n / d
    c = settings.lam * (key_energy if key_energy > 0 else 1.0)
    return a, b, c


def solve(problem: EditProblem, settings: SolveSettings) -> Solution:
    if settings.gamma <= 0 or settings.lam <= 0:
        raise SparseEditError("--gamma and --lam must both be > 0 (without either the edit is ill-posed)")
    if settings.rank < 1:
        raise SparseEditError("--rank must be at least 1")
    keys = problem.keys.to(_F64)
    targets = problem.targets.to(_F64)
    gram = problem.preserve_gram.to(_F64)
    a, b, c = scales(problem, settings)
    d = keys.shape[1]
    eye = torch.eye(d, dtype=_F64)
    rhs = a * keys.T @ targets
    if settings.nullspace == "soft":
        q = a * keys.T @ keys + b * gram + c * eye
        left, right, jitter, sv = _whitened_truncation(q, rhs, settings.rank)
        return Solution(left, right, jitter, None, sv)

    covariance = gram / max(problem.preserve_count, 1)
    values, vectors = torch.linalg.eigh((covariance + covariance.T) / 2)
    top = float(values.max()) if values.numel() else 0.0
    basis = vectors[:, values < settings.threshold * top] if top > 0 else vectors
    if basis.shape[1] == 0:
        raise SparseEditError(
            f"--nullspace hard: no direction of the harmless inputs has variance below "
            f"{settings.threshold:g} x the largest; raise --nullspace-threshold or use --nullspace soft"
        )
    # The γ term stays inside the subspace: what little harmless energy it holds is still penalised.
    q_sub = basis.T @ (a * keys.T @ keys + b * gram + c * eye) @ basis
    left_sub, right, jitter, sv = _whitened_truncation(q_sub, basis.T @ rhs, settings.rank)
    return Solution(basis @ left_sub, right, jitter, int(basis.shape[1]), sv)


def objective(problem: EditProblem, settings: SolveSettings, delta: torch.Tensor) -> float:
    a, b, c = scales(problem, settings)
    keys, targets, gram = problem.keys.to(_F64), problem.targets.to(_F64), problem.preserve_gram.to(_F64)
    delta = delta.to(_F64)
    residual = keys @ delta - targets
    return float(a * (residual**2).sum() + b * torch.trace(delta.T @ gram @ delta) + c * (delta**2).sum())


def fit_ratio(keys: torch.Tensor, targets: torch.Tensor, delta: torch.Tensor) -> float:
    """‖K ΔW − V‖ / ‖V‖: 0 is a perfect fit, 1 is no change."""
    norm = float(targets.to(_F64).norm())
    return float((keys.to(_F64) @ delta.to(_F64) - targets.to(_F64)).norm()) / norm if norm > 0 else 0.0


def leak_ratio(gram: torch.Tensor, delta: torch.Tensor, weights: torch.Tensor) -> float:
    """‖X_safe ΔW‖ / ‖X_safe W‖ computed from the Gram matrix G = X_safeᵀ X_safe."""
    gram, delta, weights = gram.to(_F64), delta.to(_F64), weights.to(_F64)
    base = float(torch.trace(weights.T @ gram @ weights))
    moved = float(torch.trace(delta.T @ gram @ delta))
    return (max(moved, 0.0) / base) ** 0.5 if base > 0 else 0.0
