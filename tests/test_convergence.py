"""Every registered solver converges at the order it declares.

The fitted slope of log(global error) against log(dt) over fixed step counts must lie within
±0.2 of ``cls.order``.  Adaptive solvers have no fixed-step option, so their stepper is driven
directly (``cls(dtype, device).step(...)`` in a loop); fixed-step solvers are also checked
through ``odeserve.solve``, which must reproduce the hand-driven loop.  Solvers come from the
registry, so a newly installed solver plugin is covered on arrival.

The fits use the 2-D rotation of ``problems.py`` and the largest error over the trajectory
(an error measured at one time only can cancel by accident).  Points whose error is below
``FLOOR`` (roundoff territory for ≤ 128 float64 steps) are dropped, and the slope is fitted
over the four smallest remaining step sizes, the most asymptotic ones.  (On nonlinear problems
Tsit5, whose principal error coefficients are tiny, stays pre-asymptotic down to roundoff.)
Because a linear autonomous problem exercises neither the time nodes nor the nonlinear order
conditions, ``test_step_matches_tableau`` checks each Runge–Kutta stepper, stage by stage,
against a NumPy evaluation of its Butcher tableau on a nonlinear non-autonomous field (the
tableaus' order conditions themselves are checked in ``test_tableaus.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import odeserve

try:
    from .problems import TestProblem, rotation
except ImportError:
    from problems import TestProblem, rotation

DT = torch.float64
CPU = torch.device("cpu")
SOLVERS = odeserve.get_registry().entries("solver")
ALL = sorted(SOLVERS)
FIXED = sorted(n for n, e in SOLVERS.items() if not e.obj.adaptive)
RK = sorted(n for n, e in SOLVERS.items() if getattr(e.obj, "tableau", None) is not None)

STEP_COUNTS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
FLOOR = 1e-11  # errors below this are dominated by rounding (~1e-16 per step, ≤ 128 steps)
SLACK = 0.2


def step_loop(cls: type, problem: TestProblem, n: int) -> torch.Tensor:
    """Integrate ``problem`` over its span with ``n`` equal steps by calling the solver's
    ``step`` directly (``f0`` passed in when the solver needs it; the loop state built with
    ``augment``/``project``).  Returns the states after each step, ``(n, D)``."""
    solver = cls(DT, CPU)
    rhs = problem.f
    y0 = problem.y0_tensor().reshape(1, -1)
    width = y0.shape[-1]
    t0, t1 = problem.t0, problem.t1
    dt = torch.tensor((t1 - t0) / n, dtype=DT)
    t = torch.tensor(t0, dtype=DT)
    state = solver.augment(rhs, t, y0)
    out = []
    for k in range(n):
        f0 = rhs(t, solver.project(state, width)) if cls.needs_f0 else None
        state = solver.step(rhs, t, state, dt, f0).y
        t = torch.tensor(t0 + (t1 - t0) * (k + 1) / n, dtype=DT)
        out.append(solver.project(state, width)[0])
    return torch.stack(out)


def trajectory_error(problem: TestProblem, ys: torch.Tensor) -> float:
    """Largest error over the states at ``t0 + k·dt``, ``k = 1..n`` (``ys`` is ``(n, D)``)."""
    n = ys.shape[0]
    ts = problem.t0 + (problem.t1 - problem.t0) * np.arange(1, n + 1) / n
    return float(np.abs(ys.detach().numpy() - problem.solution(ts)).max())


def fitted_order(problem: TestProblem, errors: dict[int, float]) -> float:
    """Slope of log(error) vs log(dt) over the four smallest dt whose error is above FLOOR."""
    span = abs(problem.t1 - problem.t0)
    assert all(np.isfinite(e) for e in errors.values()), errors
    pts = sorted((span / n, e) for n, e in errors.items() if e > FLOOR)[:4]
    assert len(pts) >= 3, f"too few step counts above the roundoff floor: {errors}"
    dts, errs = np.array(pts).T
    assert dts.max() / dts.min() >= 2, f"step sizes span too little: {pts}"
    return float(np.polyfit(np.log(dts), np.log(errs), 1)[0])


def _errors(run) -> dict[int, float]:
    errors: dict[int, float] = {}
    for n in STEP_COUNTS:
        errors[n] = run(n)
        if errors[n] < FLOOR:  # finer grids only add rounding noise
            break
    return errors


@pytest.mark.parametrize("name", ALL)
def test_fitted_order_stepper(name):
    cls = SOLVERS[name].obj
    p = rotation
    errors = _errors(lambda n: trajectory_error(p, step_loop(cls, p, n)))
    slope = fitted_order(p, errors)
    assert abs(slope - cls.order) <= SLACK, (
        f"{name}: fitted order {slope:.3f}, declared {cls.order}; errors by step count {errors}"
    )


@pytest.mark.parametrize("name", FIXED)
def test_fitted_order_solve(name):
    """Through the public API, with an output at every step (the default grid is one step per
    output interval): n steps, the hand-driven stepper's values, the declared order; and
    ``steps=n`` over ``[t0, t1]`` lands on the same final value."""
    cls = SOLVERS[name].obj
    p = rotation
    y0 = p.y0_tensor()

    def run(n: int) -> float:
        t = torch.linspace(p.t0, p.t1, n + 1, dtype=DT)
        sol = odeserve.solve(p.f, y0, t, solver=name)
        assert sol.success and int(sol.stats["steps"]) == n
        assert torch.equal(sol.ys[0], y0)
        if n in (3, 8, 32):
            ref = step_loop(cls, p, n)
            torch.testing.assert_close(sol.ys[1:], ref, rtol=1e-13, atol=1e-13)
            end = odeserve.solve(p.f, y0, t[[0, -1]], solver=name, steps=n)
            assert int(end.stats["steps"]) == n
            torch.testing.assert_close(end.ys[-1], ref[-1], rtol=1e-13, atol=1e-13)
        return trajectory_error(p, sol.ys[1:])

    errors = _errors(run)
    slope = fitted_order(p, errors)
    assert abs(slope - cls.order) <= SLACK, (
        f"{name} via solve: fitted order {slope:.3f}, declared {cls.order}; errors {errors}"
    )


# ----------------------------------------------------------------------------- stepper vs tableau


def _forced_vdp(t, y):
    """Nonlinear, non-autonomous test field; NumPy or torch (``t`` 0-d)."""
    x, v = y[..., 0], y[..., 1]
    sin3t = torch.sin(3 * t) if isinstance(t, torch.Tensor) else np.sin(3 * t)
    dv = (1 - x * x) * v - x + sin3t
    if isinstance(y, torch.Tensor):
        return torch.stack([v, dv], dim=-1)
    return np.stack([v, dv], axis=-1)


def _reference_rk(tab, f, t: float, y: np.ndarray, h: float):
    """Textbook explicit RK step from the tableau's coefficients."""
    ks = []
    for i in range(tab.stages):
        yi = y + h * sum((tab.a[i][j] * ks[j] for j in range(i)), np.zeros_like(y))
        ks.append(f(t + tab.c[i] * h, yi))
    comb = lambda w: h * sum((wi * ki for wi, ki in zip(w, ks)), np.zeros_like(y))  # noqa: E731
    return y + comb(tab.b), comb(tab.b_error) if tab.b_error is not None else None, (
        y + comb(tab.b_mid) if tab.b_mid is not None else None
    )


@pytest.mark.parametrize("name", RK)
def test_step_matches_tableau(name):
    """One step, three rows at once: new state, error estimate, midpoint value and the
    carried derivative equal a NumPy evaluation of the tableau (to rounding)."""
    cls = SOLVERS[name].obj
    tab = cls.tableau
    solver = cls(DT, CPU)
    rng = np.random.default_rng(3)
    y = rng.normal(size=(3, 2))
    t, h = 0.4, 0.37
    tt, hh, yy = torch.tensor(t, dtype=DT), torch.tensor(h, dtype=DT), torch.from_numpy(y)
    f0 = _forced_vdp(tt, yy) if cls.needs_f0 else None
    res = solver.step(_forced_vdp, tt, yy, hh, f0)
    y_ref, err_ref, mid_ref = _reference_rk(tab, _forced_vdp, t, y, h)
    torch.testing.assert_close(res.y, torch.from_numpy(y_ref), rtol=1e-13, atol=1e-13)
    if err_ref is not None:
        assert len(res.err) >= 1
        torch.testing.assert_close(res.err[0], torch.from_numpy(err_ref), rtol=1e-12, atol=1e-14)
        # the estimate is non-trivial here (a zero estimate would accept every step)
        assert float(res.err[0].abs().max()) > 1e-8
    else:
        assert not cls.adaptive
    if res.f is not None:  # what the loop carries as the next step's f0
        torch.testing.assert_close(res.f, _forced_vdp(tt + hh, res.y), rtol=1e-13, atol=1e-13)
    elif cls.adaptive:
        pytest.fail(f"{name} is adaptive but its step returns no f(t + dt, y_new)")
    if cls.adaptive:
        # dense output: the interpolant passes through both ends and, when the tableau has
        # midpoint weights, through y + h Σ b_mid k at θ = 1/2
        f_start = _forced_vdp(tt, yy)
        theta = torch.tensor([0.0, 0.5, 1.0], dtype=DT).reshape(3, 1, 1)
        vals = solver.interpolate(_forced_vdp, tt, hh, yy, f_start, res, theta)
        assert vals.shape == (3, 3, 2)
        torch.testing.assert_close(vals[0], yy, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(vals[2], res.y, rtol=1e-13, atol=1e-13)
        if mid_ref is not None:
            torch.testing.assert_close(vals[1], torch.from_numpy(mid_ref), rtol=1e-13, atol=1e-13)
            if res.y_mid is not None:
                torch.testing.assert_close(res.y_mid, torch.from_numpy(mid_ref), rtol=1e-13, atol=1e-13)
