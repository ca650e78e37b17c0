from __future__ import annotations

import pytest
import torch

from sparse_edit.edit.solver import EditProblem, SolveSettings, fit_ratio, leak_ratio, objective, scales, solve
from sparse_edit.errors import SparseEditError

F64 = torch.float64


def problem(n=60, d=16, m=10, n_safe=40, safe_rank=None, seed=0) -> EditProblem:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, d, generator=g, dtype=F64)
    targets = torch.randn(n, m, generator=g, dtype=F64)
    safe = torch.randn(n_safe, d, generator=g, dtype=F64)
    if safe_rank is not None:
        safe = safe[:, :safe_rank] @ torch.randn(safe_rank, d, generator=g, dtype=F64)
    return EditProblem(keys, targets, safe.T @ safe, n_safe)


def ridge(p: EditProblem, s: SolveSettings) -> torch.Tensor:
    a, b, c = scales(p, s)
    q = a * p.keys.T @ p.keys + b * p.preserve_gram + c * torch.eye(p.keys.shape[1], dtype=F64)
    return torch.linalg.solve(q, a * p.keys.T @ p.targets)


def test_full_rank_equals_ridge_solution():
    p, s = problem(), SolveSettings(rank=64)
    torch.testing.assert_close(solve(p, s).delta, ridge(p, s), atol=1e-10, rtol=1e-8)


def test_rank_is_bounded():
    sol = solve(problem(), SolveSettings(rank=3))
    assert sol.rank == 3 and torch.linalg.matrix_rank(sol.delta) == 3


def test_whitened_truncation_beats_naive_truncation():
    p, s = problem(), SolveSettings(rank=2, gamma=5.0)
    u, sv, vh = torch.linalg.svd(ridge(p, s), full_matrices=False)
    naive = u[:, :2] * sv[:2] @ vh[:2]
    assert objective(p, s, solve(p, s).delta) < objective(p, s, naive) - 1e-9


def test_large_gamma_drives_leak_to_zero_and_large_lambda_drives_delta_to_zero():
    p = problem()
    weights = torch.randn(16, 10, dtype=F64)
    leaks = [leak_ratio(p.preserve_gram, solve(p, SolveSettings(gamma=g)).delta, weights) for g in (1, 1e2, 1e6)]
    assert leaks[0] > leaks[1] > leaks[2] and leaks[2] < 1e-4
    norms = [float(solve(p, SolveSettings(lam=lam)).delta.norm()) for lam in (1e-2, 1e2, 1e7)]
    assert norms[0] > norms[1] > norms[2] and norms[2] < 1e-5


def test_hard_nullspace_has_zero_leak_on_preserved_inputs():
    p = problem(safe_rank=6)
    sol = solve(p, SolveSettings(nullspace="hard"))
    assert sol.nullspace_dim == 16 - 6
    assert leak_ratio(p.preserve_gram, sol.delta, torch.randn(16, 10, dtype=F64)) < 1e-6
    assert fit_ratio(p.keys, p.targets, sol.delta) < 1.0


def test_hard_nullspace_refuses_an_empty_subspace():
    p = EditProblem(torch.randn(10, 4, dtype=F64), torch.randn(10, 2, dtype=F64), torch.eye(4, dtype=F64) * 3, 10)
    with pytest.raises(SparseEditError, match="nullspace"):
        solve(p, SolveSettings(nullspace="hard"))


def test_singular_matrix_is_factored_with_jitter():
    from sparse_edit.edit.solver import _cholesky_with_jitter

    v = torch.randn(6, 2, dtype=F64)
    upper, jitter = _cholesky_with_jitter(v @ v.T)  # rank 2 of 6: plain Cholesky fails
    assert jitter > 0
    torch.testing.assert_close(upper.T @ upper, v @ v.T + jitter * torch.eye(6, dtype=F64))


def test_zero_keys_give_a_zero_edit():
    p = EditProblem(torch.zeros(5, 3, dtype=F64), torch.zeros(5, 2, dtype=F64), torch.zeros(3, 3, dtype=F64), 5)
    assert torch.count_nonzero(solve(p, SolveSettings()).delta) == 0


def test_gamma_and_lambda_must_be_positive():
    with pytest.raises(SparseEditError, match="> 0"):
        solve(problem(), SolveSettings(gamma=0))
