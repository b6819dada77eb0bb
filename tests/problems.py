"""Classic ODE test problems, shared by the tests and the benchmarks.

Each :class:`TestProblem` has a right-hand side ``f(t, y)`` written once, with arithmetic
only, so that it runs on torch tensors (any leading batch axes: ``y`` is ``(..., D)``, ``t``
0-d or broadcasting against ``y[..., 0]``) and on NumPy arrays alike; an initial state; a
time span; and either a closed-form solution or a reference from SciPy's
``solve_ivp(method="DOP853", rtol=1e-12, atol=1e-12)`` run on that same ``f``.

The problems are the usual non-stiff test set (E. Hairer, S. P. Nørsett, G. Wanner, *Solving
Ordinary Differential Equations I*, Springer): a linear system, the harmonic oscillator,
Van der Pol, Lotka–Volterra, the Kepler two-body problem and the Brusselator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "TestProblem",
    "PROBLEMS",
    "linear",
    "harmonic",
    "van_der_pol",
    "make_van_der_pol",
    "kepler_exact",
    "kepler_y0",
    "lotka_volterra",
    "kepler",
    "brusselator",
    "cos_growth",
    "circular_kepler",
    "forced_oscillator",
    "rotation",
    "reference_solution",
    "tolerances",
    "TimeConcatMLP",
]

Exact = Callable[[np.ndarray], np.ndarray]  # times (T,) -> states (T, D)


@dataclass(frozen=True)
class TestProblem:
    """One initial-value problem ``y' = f(t, y)``, ``y(t0) = y0`` on ``[t0, t1]``."""

    __test__ = False  # not a pytest test class despite the name

    name: str
    f: Callable[[Tensor, Tensor], Tensor]
    y0: tuple[float, ...]
    t0: float
    t1: float
    exact: Optional[Exact] = None
    params: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def dim(self) -> int:
        return len(self.y0)

    def y0_tensor(self, dtype: torch.dtype = torch.float64) -> Tensor:
        return torch.tensor(self.y0, dtype=dtype)

    def times(self, n: int) -> np.ndarray:
        """``n`` equally spaced output times including both ends."""
        return np.linspace(self.t0, self.t1, n)

    def f_numpy(self, t: float, y: np.ndarray) -> np.ndarray:
        # The right-hand sides use only arithmetic and ``_stack``, so the very same code
        # runs on NumPy arrays (fast for SciPy) and on torch tensors.
        return self.f(np.float64(t), np.asarray(y, dtype=np.float64))

    def solution(self, t: np.ndarray) -> np.ndarray:
        """The true solution at ``t`` (closed form, else the DOP853 1e-12 reference)."""
        t = np.asarray(t, dtype=np.float64)
        if self.exact is not None:
            return self.exact(t)
        return reference_solution(self, tuple(t.tolist()))


@lru_cache(maxsize=None)
def reference_solution(problem: TestProblem, t_eval: tuple[float, ...]) -> np.ndarray:
    """SciPy DOP853 at rtol = atol = 1e-12 from ``problem.t0`` through ``t_eval`` (which must
    start at ``t0`` and be monotone): ``(T, D)``."""
    from scipy.integrate import solve_ivp

    times = np.asarray(t_eval, dtype=np.float64)
    if times[0] != problem.t0:
        raise ValueError(f"t_eval must start at t0 = {problem.t0}")
    sol = solve_ivp(
        problem.f_numpy, (problem.t0, float(times[-1])), np.asarray(problem.y0, dtype=np.float64),
        method="DOP853", rtol=1e-12, atol=1e-12, t_eval=times,
    )
    if not sol.success:  # pragma: no cover - a broken reference is a test-suite bug
        raise RuntimeError(f"reference solve of {problem.name} failed: {sol.message}")
    return sol.y.T.copy()


def _stack(*cols):
    """Stack components on the last axis: torch for tensors, NumPy for arrays."""
    if isinstance(cols[0], Tensor):
        return torch.stack(torch.broadcast_tensors(*cols), dim=-1)
    return np.stack(np.broadcast_arrays(*cols), axis=-1)


# ----------------------------------------------------------------------------- problems

# Spans are kept short (a few time units) so that the whole suite runs in seconds on a CPU, and
# so that a correct solver's global error stays within 10x its local tolerance: SciPy's RK23 at
# rtol = 1e-5 exceeds that on Lotka-Volterra past t = 4.5 (prey peak) and on the Brusselator in
# its fast phase after t = 7 (26x and 18x at t = 8), while staying under 5x on these spans.

# 1. Linear: a damped rotation y' = A y, A = [[-a, w], [-w, -a]]; y = e^{-a t} R(-w t) y0.
_LIN_A, _LIN_W = 0.3, 2.0


def _linear_f(t: Tensor, y: Tensor) -> Tensor:
    x, v = y[..., 0], y[..., 1]
    return _stack(-_LIN_A * x + _LIN_W * v, -_LIN_W * x - _LIN_A * v)


def _linear_exact(t: np.ndarray) -> np.ndarray:
    x0, v0 = 1.0, 0.5
    d, c, s = np.exp(-_LIN_A * t), np.cos(_LIN_W * t), np.sin(_LIN_W * t)
    return np.stack([d * (c * x0 + s * v0), d * (-s * x0 + c * v0)], axis=-1)


linear = TestProblem("linear", _linear_f, (1.0, 0.5), 0.0, 5.0, _linear_exact, {"a": _LIN_A, "w": _LIN_W})

# 2. Harmonic oscillator x'' = -w² x; x = cos(w t), v = -w sin(w t).
_HO_W = 1.5


def _harmonic_f(t: Tensor, y: Tensor) -> Tensor:
    return _stack(y[..., 1], -(_HO_W**2) * y[..., 0])


def _harmonic_exact(t: np.ndarray) -> np.ndarray:
    return np.stack([np.cos(_HO_W * t), -_HO_W * np.sin(_HO_W * t)], axis=-1)


harmonic = TestProblem("harmonic", _harmonic_f, (1.0, 0.0), 0.0, 6.0, _harmonic_exact, {"w": _HO_W})


# 3. Van der Pol, mu = 1 (non-stiff): x' = v, v' = mu (1 - x²) v - x.
def make_van_der_pol(mu: float) -> Callable[[Tensor, Tensor], Tensor]:
    def f(t: Tensor, y: Tensor) -> Tensor:
        x, v = y[..., 0], y[..., 1]
        return _stack(v, mu * (1 - x * x) * v - x)

    return f


van_der_pol = TestProblem("van_der_pol", make_van_der_pol(1.0), (2.0, 0.0), 0.0, 7.0, None, {"mu": 1.0})

# 4. Lotka–Volterra: x' = a x - b x y, y' = -c y + d x y (SciPy's documentation example).
_LV = (1.5, 1.0, 3.0, 1.0)


def _lotka_f(t: Tensor, y: Tensor) -> Tensor:
    a, b, c, d = _LV
    x, z = y[..., 0], y[..., 1]
    return _stack(a * x - b * x * z, -c * z + d * x * z)


lotka_volterra = TestProblem("lotka_volterra", _lotka_f, (10.0, 5.0), 0.0, 4.0, None, {"abcd": _LV})


# 5. Kepler orbit, eccentricity e = 0.5, period 2π: q'' = -q / |q|³ from perihelion, over half an
#    orbit (perihelion → aphelion, the fast passage included).  Over a whole orbit the phase error
#    at the return to perihelion (speed √3) exceeds 10× the local tolerance even for SciPy's RK45.
def _kepler_f(t: Tensor, y: Tensor) -> Tensor:
    q1, q2, p1, p2 = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    r3 = (q1 * q1 + q2 * q2) ** 1.5
    return _stack(p1, p2, -q1 / r3, -q2 / r3)


def kepler_exact(e: float) -> Exact:
    """Closed form through Kepler's equation E - e sin E = t (a = 1, period 2π)."""

    def exact(t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        E = t + e * np.sin(t)
        for _ in range(60):  # Newton on E - e sin E - t; converges for e < 1
            E = E - (E - e * np.sin(E) - t) / (1 - e * np.cos(E))
        c, s = np.cos(E), np.sin(E)
        b = math.sqrt(1 - e * e)
        dE = 1 / (1 - e * c)
        return np.stack([c - e, b * s, -s * dE, b * c * dE], axis=-1)

    return exact


def kepler_y0(e: float) -> tuple[float, ...]:
    return (1.0 - e, 0.0, 0.0, math.sqrt((1 + e) / (1 - e)))


kepler = TestProblem("kepler", _kepler_f, kepler_y0(0.5), 0.0, math.pi, kepler_exact(0.5), {"e": 0.5})

# 6. Brusselator: x' = A + x² y - (B + 1) x, y' = B x - x² y, A = 1, B = 3 (Hairer I, §I.16).
_BR = (1.0, 3.0)


def _brusselator_f(t: Tensor, y: Tensor) -> Tensor:
    A, B = _BR
    x, z = y[..., 0], y[..., 1]
    x2z = x * x * z
    return _stack(A + x2z - (B + 1) * x, B * x - x2z)


brusselator = TestProblem("brusselator", _brusselator_f, (1.5, 3.0), 0.0, 6.0, None, {"AB": _BR})

#: The six classic problems the reference tests run every adaptive solver on.
PROBLEMS: dict[str, TestProblem] = {
    p.name: p for p in (linear, harmonic, van_der_pol, lotka_volterra, kepler, brusselator)
}


# ----------------------------------------------------------------------------- convergence


# y' = cos(t) y, y(0) = 1: y = exp(sin t).  Non-autonomous, so it exercises every node c_i.
def _cos_growth_f(t: Tensor, y: Tensor) -> Tensor:
    c = torch.cos(t)
    if 0 < c.ndim < y.ndim:  # per-sample times (rows,) against states (rows, 1)
        c = c.reshape(tuple(c.shape) + (1,) * (y.ndim - c.ndim))
    return c * y


cos_growth = TestProblem("cos_growth", _cos_growth_f, (1.0,), 0.0, 2.0, lambda t: np.exp(np.sin(t))[:, None])


# Forced oscillator x'' + x = cos(2t), x(0) = 1, x'(0) = 0:
# x = (4/3) cos t - cos(2t) / 3.  Linear but non-autonomous through the forcing, so every
# stage's time node c_i matters; its error constants let even Tsit5 (whose principal
# error coefficients are tiny, so nonlinear problems stay pre-asymptotic down to roundoff)
# show its order in float64.
def _forced_f(t: Tensor, y: Tensor) -> Tensor:
    x, v = y[..., 0], y[..., 1]
    cos2t = torch.cos(2 * t) if isinstance(t, Tensor) else np.cos(2 * t)
    if isinstance(t, Tensor) and 0 < t.ndim < x.ndim:
        cos2t = cos2t.reshape(tuple(t.shape) + (1,) * (x.ndim - t.ndim))
    return _stack(v, -x + cos2t)


def _forced_exact(t: np.ndarray) -> np.ndarray:
    return np.stack([4 / 3 * np.cos(t) - np.cos(2 * t) / 3, -4 / 3 * np.sin(t) + 2 / 3 * np.sin(2 * t)], axis=-1)


forced_oscillator = TestProblem("forced_oscillator", _forced_f, (1.0, 0.0), 0.0, 3.0, _forced_exact)


# Rotation y' = (-y_2, y_1), y(0) = (1, 0): y = (cos t, sin t).  The convergence fits use it:
# its error constants make every built-in (Tsit5 included) asymptotic well above roundoff.
def _rotation_f(t: Tensor, y: Tensor) -> Tensor:
    return _stack(-y[..., 1], y[..., 0])


rotation = TestProblem(
    "rotation", _rotation_f, (1.0, 0.0), 0.0, 3.0, lambda t: np.stack([np.cos(t), np.sin(t)], axis=-1)
)

#: Circular Kepler orbit (e = 0): nonlinear, autonomous 4-D system with q = (cos t, sin t).
circular_kepler = TestProblem("circular_kepler", _kepler_f, kepler_y0(0.0), 0.0, 2.0, kepler_exact(0.0), {"e": 0.0})


# ----------------------------------------------------------------------------- settings


def tolerances(order: int) -> tuple[float, float]:
    """``(rtol, atol)`` for tests that run an adaptive solver of this order on the problems
    above: 1e-6 / 1e-9 from order 4 up, looser for low orders so that the step counts (and
    the suite's run time) stay small.  The accuracy the tests demand scales with them."""
    rtol = {1: 1e-3, 2: 1e-3, 3: 1e-5}.get(order, 1e-6)
    return rtol, rtol * 1e-3


# ----------------------------------------------------------------------------- a neural ODE


class TimeConcatMLP(nn.Module):
    """The exporters' test model: ``f(t, y) = W2 tanh(W1 [y, t] + b1) + b2``, ``dim → hidden
    → dim``, with ``t`` 0-d (joint) or ``(batch,)`` (per sample).  Seeded, so every instance
    has the same weights; ``weight_scale`` multiplies ``W1`` (livelier dynamics, more steps)."""

    def __init__(self, dim: int = 2, hidden: int = 8, weight_scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)
        if weight_scale != 1.0:
            with torch.no_grad():
                self.l1.weight.mul_(weight_scale)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        tt = t.reshape(-1, 1).to(y.dtype).expand(y.shape[0], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], dim=1))))
