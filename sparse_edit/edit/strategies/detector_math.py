"""A thresholded harmfulness detector written into one MLP neuron (the ``detector`` strategy).

A linear edit adds the refusal direction in proportion to a linear score, so every benign
prompt with a middling score gets a push. A gated MLP neuron computes ``act(g·x) · (u·x)``;
with ``g = κ w`` and ``u = w`` its output is about ``κ s²`` for a detector score ``s = w·x > 0``
and about 0 for ``s < 0`` (SiLU and GELU vanish for large negative inputs), so writing the
detector into a neuron gives it a threshold at 0 for free — the MLP input has no bias term.

The detector ``w`` is a ridge probe on the MLP input, fitted in closed form: harmful prompts'
last-token rows (low-resource and reference) to +1, harmless prompts' last-token rows and every
harmless token (through its Gram matrix and token sum, the null-space term) to ``−margin``.
The neuron's output column is the layer's refusal direction times one scale, the least-squares
fit of the response to the refusal-projection gap of the low-resource harmful anchors.

The response ``κ s²`` gives prompts just past the threshold almost no push and the highest-scoring ones
far too much. ``step`` writes two neurons instead, both with up row ``u`` (a bias direction: ``u·x ≈ 1``
on every token, fitted on the harmless token moments) and gate rows ``κ w`` and ``κ (w − δ u)``, their
output columns opposite: ``act(κ s) − act(κ (s − δ))`` ramps from 0 at the threshold to ``κ δ`` at
``s = δ`` and stays there, so every prompt the detector fires on gets the same push. With up row ``u`` a
direction that reads about 1 only on the prompts' last tokens (``prompt_end_direction``) instead, the pair
pushes there alone: a gate row that also fires on content or reply tokens moves nothing at those tokens.

``release`` mode swaps the two prompt classes: the probe fires on harmless prompts' last tokens
and the scale (negative) lowers their refusal projection to the reference harmless level; run
on an already edited model, it takes back the push that edit gives benign prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sparse_edit.errors import SparseEditError

F64 = torch.float64
Activation = Callable[[torch.Tensor], torch.Tensor]


def fit_detector(
    positive: torch.Tensor,
    negative: torch.Tensor,
    token_gram: torch.Tensor,
    token_sum: torch.Tensor,
    tokens: int,
    margin: float,
    lam: float,
) -> torch.Tensor:
    """Ridge probe ``w`` [d]: ``positive`` rows -> +1, ``negative`` rows and the harmless tokens -> −margin.

    refuse mode: harmful last-token rows are positive, harmless ones negative; release mode: the other way
    round. The tokens (every harmless token, given by Gram and sum) are negative in both: the neuron should
    fire at a prompt's end, not on its content. The three groups carry equal total weight; λ is relative to
    the mean diagonal of the normal matrix.
    """
    h, t = positive.to(F64), negative.to(F64)
    if not h.shape[0]:
        raise SparseEditError("--strategy detector: no anchor rows to fit the detector on")
    normal = h.T @ h / h.shape[0]
    target = h.sum(0) / h.shape[0]
    if t.shape[0]:
        normal = normal + t.T @ t / t.shape[0]
        target = target - margin * t.sum(0) / t.shape[0]
    if tokens:
        normal = normal + token_gram.to(F64) / tokens
        target = target - margin * token_sum.to(F64) / tokens
    ridge = lam * float(torch.trace(normal)) / normal.shape[0]
    return torch.linalg.solve(normal + ridge * torch.eye(normal.shape[0], dtype=F64), target)


def response(scores: torch.Tensor, activation: Activation, sharpness: float) -> torch.Tensor:
    """The repurposed neuron's activation for detector scores ``s``: ``act(κ s) · s``."""
    scores = scores.to(F64)
    return activation(sharpness * scores) * scores


def bias_direction(
    token_gram: torch.Tensor, token_sum: torch.Tensor, tokens: int, lam: float = 1e-3
) -> torch.Tensor:
    """``u`` [d] with ``u·x ≈ 1`` on every harmless token: ridge least squares of the constant 1 over the tokens'
    Gram and sum (the MLP input is a normed state, so such a direction exists on every family measured; how
    near-constant it is, is reported as the spread of ``u·x``)."""
    if tokens <= 0:
        raise SparseEditError("--detector-response step: no harmless tokens to fit the bias direction on")
    normal = token_gram.to(F64) / tokens
    ridge = lam * float(torch.trace(normal)) / normal.shape[0]
    return torch.linalg.solve(normal + ridge * torch.eye(normal.shape[0], dtype=F64), token_sum.to(F64) / tokens)


def prompt_end_direction(
    ends: torch.Tensor, token_gram: torch.Tensor, tokens: int, lam: float = 1e-3
) -> torch.Tensor:
    """``u`` [d] with ``u·x ≈ 1`` on the prompts' last tokens (``ends`` [n, d]) and ``≈ 0`` on every harmless
    token (Gram over ``tokens``): ridge least squares, the two groups weighted equally. As a step pair's up row it
    keeps the pair still wherever ``u·x ≈ 0``, whatever its gate row reads there: the template's last token is
    the same in every prompt, so its state is told apart from content and reply tokens."""
    if tokens <= 0 or not ends.shape[0]:
        raise SparseEditError("--detector-push-at prompt-end: no harmless tokens or prompt ends to fit it on")
    ends = ends.to(F64)
    normal = ends.T @ ends / ends.shape[0] + token_gram.to(F64) / tokens
    ridge = lam * float(torch.trace(normal)) / normal.shape[0]
    target = ends.sum(0) / ends.shape[0]
    return torch.linalg.solve(normal + ridge * torch.eye(normal.shape[0], dtype=F64), target)


def step_response(
    scores: torch.Tensor, bias: torch.Tensor, activation: Activation, sharpness: float, ramp: float
) -> torch.Tensor:
    """The response of a ``step`` neuron pair for scores ``s`` and bias read-outs ``b = u·x`` (≈ 1):
    ``(act(κ s) − act(κ (s − δ b))) · b`` with ``κ = sharpness / δ``; it saturates at about ``sharpness``
    for ``s ≥ δ``. ``scores`` [rows, n], ``bias`` [rows]."""
    scores, bias = scores.to(F64), bias.to(F64)[:, None]
    kappa = sharpness / ramp
    return (activation(kappa * scores) - activation(kappa * (scores - ramp * bias))) * bias


def harmless_output_energy(square_sums: torch.Tensor, down_rows: torch.Tensor) -> torch.Tensor:
    """Per neuron, the energy its output carries on harmless tokens: Σ a_j² · ‖down_j‖² ([d_ff])."""
    return square_sums.to(F64) * (down_rows.to(F64) ** 2).sum(1)


def output_scale(responses: torch.Tensor, wanted: torch.Tensor) -> float:
    """Least-squares ``τ`` with ``τ · response ≈ wanted shift`` over the anchors it should fire on."""
    energy = require_firing(responses)
    return float((responses.to(F64) * wanted.to(F64)).sum()) / energy


def require_firing(responses: torch.Tensor) -> float:
    """The responses' total energy; refused when the detector(s) fire on no anchor they are fitted to."""
    energy = float((responses.to(F64) ** 2).sum())
    if energy <= 0:
        raise SparseEditError(
            "--strategy detector: the detector does not fire on any anchor it is fitted to at this layer; "
            "try another --layer or a smaller --detector-margin"
        )
    return energy
