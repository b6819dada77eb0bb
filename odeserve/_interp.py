"""Dense output inside a step: Hermite interpolation through the step's end values.

Cubic: matches ``y`` and ``f`` at both ends (local error O(dt⁴)).  Quartic: also matches the
solution at the midpoint when the solver provides it (dopri5 through Shampine's weights;
local error O(dt⁵), the accuracy of the 4th-order embedded solution).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["HermiteInterpolant"]


def _basis(quartic: bool) -> np.ndarray:
    """Matrix B with p(θ) = Σ_m (Σ_p θ^p B[p, m]) v_m for v = (y0, y1, dt·f0, dt·f1[, y_mid])."""
    deg = 4 if quartic else 3
    rows = [
        [1.0] + [0.0] * deg,  # p(0) = y0
        [1.0] * (deg + 1),  # p(1) = y1
        [0.0, 1.0] + [0.0] * (deg - 1),  # p'(0) = dt f0
        [float(p) for p in range(deg + 1)],  # p'(1) = dt f1
    ]
    if quartic:
        rows.append([0.5**p for p in range(deg + 1)])  # p(1/2) = y_mid
    return np.linalg.inv(np.array(rows))


class HermiteInterpolant:
    """Evaluates the interpolant at many ``θ`` at once; constants are made once per solve."""

    def __init__(self, quartic: bool, dtype: torch.dtype, device: torch.device) -> None:
        self.quartic = quartic
        self.basis = torch.tensor(_basis(quartic), dtype=dtype, device=device)

    def __call__(
        self, theta: Tensor, dt: Tensor, y0: Tensor, y1: Tensor, f0: Tensor, f1: Tensor, y_mid: Tensor | None
    ) -> Tensor:
        """``theta``: ``(T, r, 1)`` with ``r`` 1 or rows; states ``(rows, D)``; returns ``(T, rows, D)``."""
        values = [y0, y1, dt * f0, dt * f1]
        if self.quartic:
            assert y_mid is not None
            values.append(y_mid)
        powers = [torch.ones_like(theta), theta]
        for _ in range(len(values) - 2):
            powers.append(powers[-1] * theta)
        weights = torch.stack(powers, dim=-1) @ self.basis  # (T, r, 1, m)
        out = weights[..., 0] * values[0]
        for m in range(1, len(values)):
            out = out + weights[..., m] * values[m]
        return out
