"""Dense output: values at output times that fall inside steps.

Adaptive solvers do not shorten steps to hit output times; they interpolate inside the
accepted step (cubic Hermite by default, quartic through the midpoint for tableaus with
``b_mid`` such as dopri5 and tsit5, or the solver's own continuous extension).  So:
outputs must be as accurate as the solve, asking for outputs must not change the steps, and
the interpolant must have the local order its construction promises.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import odeserve

try:
    from .problems import circular_kepler, harmonic, tolerances
except ImportError:
    from problems import circular_kepler, harmonic, tolerances

DT = torch.float64
CPU = torch.device("cpu")
SOLVERS = odeserve.get_registry().entries("solver")
ADAPTIVE = sorted(n for n, e in SOLVERS.items() if e.obj.adaptive)
FIXED = sorted(n for n, e in SOLVERS.items() if not e.obj.adaptive)
QUARTIC = sorted(n for n in ADAPTIVE if getattr(getattr(SOLVERS[n].obj, "tableau", None), "b_mid", None) is not None)


def _bound(ref: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    return 10 * (atol + rtol * np.abs(ref).max(axis=-1))


@pytest.mark.parametrize("name", ADAPTIVE)
def test_dense_output_accuracy(name):
    """81 output times on the harmonic oscillator over [0, 3]; adaptive steps do not land on
    them, so all but the last are interpolated."""
    rtol, atol = tolerances(SOLVERS[name].obj.order)
    t = np.linspace(0.0, 3.0, 81)
    sol = odeserve.solve(harmonic.f, harmonic.y0_tensor(), torch.tensor(t), solver=name, rtol=rtol, atol=atol)
    assert sol.success
    ref = harmonic.solution(t)
    err = np.abs(sol.ys.numpy() - ref).max(axis=-1)
    bound = _bound(ref, rtol, atol)
    worst = int(np.argmax(err / bound))
    assert (err <= bound).all(), f"{name}: error {err[worst]:.3g} > {bound[worst]:.3g} at t = {t[worst]:.4f}"


@pytest.mark.parametrize("name", QUARTIC)
def test_quartic_dense_output_is_rtol_accurate(name):
    """dopri5's (and tsit5's) quartic interpolant at rtol = 1e-6 on a nonlinear orbit: every
    one of 301 outputs (~15 per step) within 10·(atol + rtol·|y|) of the exact solution, and
    the interpolated values no less accurate (within 3×) than the solve's own final value
    (the global error grows along the orbit, so the final value bounds the step-end errors)."""
    rtol, atol = 1e-6, 1e-9
    p = circular_kepler
    t = np.linspace(p.t0, 3.0, 301)
    sol = odeserve.solve(p.f, p.y0_tensor(), torch.tensor(t), solver=name, rtol=rtol, atol=atol)
    ref = p.solution(t)
    err = np.abs(sol.ys.numpy() - ref).max(axis=-1)
    assert (err <= _bound(ref, rtol, atol)).all(), err.max()
    end = odeserve.solve(p.f, p.y0_tensor(), torch.tensor([p.t0, 3.0], dtype=DT), solver=name, rtol=rtol, atol=atol)
    end_err = float(np.abs(end.ys[-1].numpy() - ref[-1]).max())
    assert err.max() <= 3 * end_err + 10 * atol, (err.max(), end_err)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_output_times_do_not_change_the_steps(name):
    rtol, atol = tolerances(SOLVERS[name].obj.order)
    y0 = harmonic.y0_tensor()
    dense = odeserve.solve(harmonic.f, y0, torch.linspace(0.0, 3.0, 41, dtype=DT), solver=name, rtol=rtol, atol=atol)
    ends = odeserve.solve(harmonic.f, y0, torch.tensor([0.0, 3.0], dtype=DT), solver=name, rtol=rtol, atol=atol)
    for key in ("steps", "accepted", "rejected"):
        assert int(dense.stats[key]) == int(ends.stats[key]), key
    assert torch.equal(dense.ys[-1], ends.ys[-1])
    assert torch.equal(dense.ys[0], y0)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_interpolant_local_order(name):
    """One step of size h from the exact state: the interpolant's error inside the step is
    O(h^q) with q ≥ 5 for a quartic (b_mid) interpolant and q ≥ min(4, order + 1) for any
    interpolant (the cubic Hermite default); the fitted exponent may fall short by 0.2."""
    cls = SOLVERS[name].obj
    solver = cls(DT, CPU)
    p = circular_kepler
    t0 = 0.3
    y0 = torch.from_numpy(p.solution(np.array([t0]))).reshape(1, -1)
    tt = torch.tensor(t0, dtype=DT)
    f0 = p.f(tt, y0)
    thetas = np.array([0.2, 0.37, 0.5, 0.81])
    theta = torch.tensor(thetas, dtype=DT).reshape(-1, 1, 1)
    hs, errs = [], []
    for h in (0.4, 0.2, 0.1, 0.05, 0.025):
        dt = torch.tensor(h, dtype=DT)
        res = solver.step(p.f, tt, y0, dt, f0 if cls.needs_f0 else None)
        vals = solver.interpolate(p.f, tt, dt, y0, f0, res, theta)
        assert vals.shape == (4, 1, 4)
        e = float(np.abs(vals[:, 0].numpy() - p.solution(t0 + h * thetas)).max())
        if e > 1e-13:  # above rounding
            hs.append(h)
            errs.append(e)
    assert len(hs) >= 2, errs
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    expected = 5 if name in QUARTIC else min(4, cls.order + 1)
    assert slope >= expected - 0.2, f"{name}: interpolant error ~ h^{slope:.2f}, expected ≥ h^{expected}"


@pytest.mark.parametrize("name", FIXED)
def test_fixed_grid_lands_on_output_times(name):
    """Fixed-step grids put a step boundary on every output time (no interpolation): with
    dt = 0.1 and outputs at 0.3 and 1, the value at 0.3 is the state after 3 steps."""
    y0 = harmonic.y0_tensor()
    sol = odeserve.solve(harmonic.f, y0, torch.tensor([0.0, 0.3, 1.0], dtype=DT), solver=name, dt=0.1)
    assert int(sol.stats["steps"]) == 10
    first = odeserve.solve(harmonic.f, y0, torch.tensor([0.0, 0.3], dtype=DT), solver=name, steps=3)
    assert torch.equal(sol.ys[1], first.ys[-1])
    # an output time between grid points of a coarser dt gets its own boundary
    odd = odeserve.solve(harmonic.f, y0, torch.tensor([0.0, 0.25, 1.0], dtype=DT), solver=name, dt=0.1)
    assert int(odd.stats["steps"]) == 3 + 8
    ref = harmonic.solution(np.array([0.0, 0.25, 1.0]))
    # as accurate as the grid allows: order p with dt ≤ 0.1
    assert np.abs(odd.ys.numpy() - ref).max() <= 0.1 ** SOLVERS[name].obj.order * 2
