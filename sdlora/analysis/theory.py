"""Theorem 1 made visible: gradient descent on the matrix factorisation of Eqn. A.10,

    l(A, B) = 1/2 ||A B - dW*||_F^2,   A (m x r), B (r x n),

from the small random start of the theorem, (A0, B0) * rho / (3 sqrt(m + n + r)) with entries of
A0, B0 i.i.d. N(0, sigma_1) (variance sigma_1). The singular values of A B approach those of
dW* one after another, largest first: the low-rank update learns dW*'s principal components in
order, which is why SD-LoRA's first directions carry most of what later tasks need.
"""
from __future__ import annotations

import numpy as np

__all__ = ["matrix_factorisation_dynamics"]


def matrix_factorisation_dynamics(m: int = 30, n: int = 30, r: int = 4,
                                  spectrum: tuple[float, ...] = (4.0, 2.0, 1.0, 0.5),
                                  rho: float = 1e-3, eta: float = 0.05, iterations: int = 1500,
                                  record_every: int = 5, seed: int = 0) -> dict:
    """Run the gradient descent of Theorem 1; returns the iterations recorded, the top
    min(r, len(spectrum)) singular values of A B at each, the target spectrum, and for each
    target singular value the first iteration at which A B's matches it within 10%.

    Raises ValueError for sizes or rates that do not make sense, naming the value.
    """
    spectrum = np.sort(np.asarray(spectrum, dtype=float))[::-1]
    for name, value in (("m", m), ("n", n), ("r", r), ("iterations", iterations),
                        ("record_every", record_every)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name}={value} must be a positive integer")
    if len(spectrum) == 0 or len(spectrum) > min(m, n) or spectrum[-1] < 0:
        raise ValueError(f"spectrum={spectrum.tolist()} must hold 1 to min(m, n)={min(m, n)} "
                         f"non-negative singular values")
    if not rho > 0 or not eta > 0:
        raise ValueError(f"rho={rho} and eta={eta} must be positive")
    if eta * spectrum[0] >= 1.0:
        raise ValueError(f"eta={eta} is too large for sigma_1={spectrum[0]:g}: gradient descent "
                         f"diverges unless eta * sigma_1 < 1 (try eta < {1 / spectrum[0]:.3g})")
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, m)))
    V, _ = np.linalg.qr(rng.standard_normal((n, n)))
    k = len(spectrum)
    target = (U[:, :k] * spectrum) @ V[:, :k].T  # (m, n)
    scale = rho / (3 * np.sqrt(m + n + r)) * np.sqrt(spectrum[0])
    A = rng.standard_normal((m, r)) * scale
    B = rng.standard_normal((r, n)) * scale
    shown = min(r, k)
    steps, values = [], []
    for it in range(iterations + 1):
        if it % record_every == 0:
            steps.append(it)
            values.append(np.linalg.svd(A @ B, compute_uv=False)[:shown])
        residual = A @ B - target  # (m, n)
        A, B = A - eta * residual @ B.T, B - eta * A.T @ residual
    values = np.array(values)  # (records, shown)
    learned_at = []
    for j in range(shown):
        hit = np.flatnonzero(np.abs(values[:, j] - spectrum[j]) <= 0.1 * spectrum[j])
        learned_at.append(int(steps[hit[0]]) if hit.size else None)
    return dict(iterations=steps, singular_values=values.tolist(), target=spectrum.tolist(),
                learned_at=learned_at, final_error=float(np.linalg.norm(A @ B - target)))
