"""Bad input gets a named exception whose message says what is wrong; numerical failures
end the solve promptly with a status (and, with ``throw=True``, a ``SolveFailedError``
carrying the partial solution) — never a hang."""

from __future__ import annotations

import math
import time

import pytest
import torch

import odeserve
from odeserve import (
    DtypeMismatchError,
    InvalidOptionError,
    InvalidTimesError,
    InvalidToleranceError,
    NonFiniteError,
    OdeserveError,
    ShapeMismatchError,
    SolveFailedError,
    Status,
    UnknownPluginError,
)

try:
    from .problems import tolerances
except ImportError:
    from problems import tolerances

DT = torch.float64
SOLVERS = odeserve.get_registry().entries("solver")
ALL = sorted(SOLVERS)
ADAPTIVE = sorted(n for n, e in SOLVERS.items() if e.obj.adaptive)
FIXED = sorted(n for n, e in SOLVERS.items() if not e.obj.adaptive)

Y0 = torch.tensor([1.0, 0.0], dtype=DT)
T = torch.tensor([0.0, 0.5, 1.0], dtype=DT)


def rot(t, y):
    return torch.stack([-y[..., 1], y[..., 0]], dim=-1)


def _loose(name: str) -> dict:
    cls = SOLVERS[name].obj
    if cls.adaptive:
        rtol, atol = tolerances(cls.order)
        return {"rtol": max(rtol, 1e-5), "atol": max(atol, 1e-8)}
    return {"steps": 20}


# ----------------------------------------------------------------------------- times


def test_non_monotone_times():
    with pytest.raises(InvalidTimesError, match="strictly increasing or strictly decreasing") as info:
        odeserve.solve(rot, Y0, [0.0, 1.0, 0.5, 2.0])
    assert "[0.0, 1.0, 0.5, 2.0]" in str(info.value)  # shows the offending grid
    assert isinstance(info.value, ValueError) and isinstance(info.value, OdeserveError)


def test_duplicate_times():
    with pytest.raises(InvalidTimesError, match=r"repeated time 1\.0 at positions 1 and 2"):
        odeserve.solve(rot, Y0, [0.0, 1.0, 1.0, 2.0])


@pytest.mark.parametrize("t", [[0.0], [], 1.0, [[0.0, 1.0]]], ids=["one", "empty", "scalar", "2d"])
def test_too_short_or_misshapen_times(t):
    with pytest.raises(InvalidTimesError, match="at least 2 times"):
        odeserve.solve(rot, Y0, t)


def test_non_finite_times():
    with pytest.raises(InvalidTimesError, match="NaN or Inf"):
        odeserve.solve(rot, Y0, [0.0, math.nan, 1.0])


# ----------------------------------------------------------------------------- states


def test_f_returns_wrong_shape():
    with pytest.raises(ShapeMismatchError, match=r"shape \(3,\) but y0 has shape \(2,\)"):
        odeserve.solve(lambda t, y: torch.zeros(3, dtype=DT), Y0, T)


def test_f_returns_wrong_dtype():
    with pytest.raises(DtypeMismatchError, match="torch.float32 but y0 has torch.float64"):
        odeserve.solve(lambda t, y: rot(t, y).float(), Y0, T)


def test_f_returns_wrong_structure():
    with pytest.raises(ShapeMismatchError, match="tuple of 2 tensors"):
        odeserve.solve(lambda t, y: (y[0],), (Y0[:1], Y0[1:]), T)
    with pytest.raises(ShapeMismatchError, match="one tensor"):
        odeserve.solve(lambda t, y: (y, y), Y0, T)


def test_integer_or_mixed_dtype_state():
    with pytest.raises(DtypeMismatchError, match="floating point"):
        odeserve.solve(lambda t, y: y, torch.tensor([1, 2]), T)
    with pytest.raises(DtypeMismatchError, match="different dtypes"):
        odeserve.solve(lambda t, y: y, (Y0, Y0.float()), T)


def test_per_sample_needs_batch_axis():
    with pytest.raises(ShapeMismatchError, match="batch axis"):
        odeserve.solve(lambda t, y: -y, torch.tensor(1.0, dtype=DT), T, batch="per_sample")
    with pytest.raises(ShapeMismatchError, match="one batch size"):
        odeserve.solve(lambda t, y: y, (torch.ones(2, 1, dtype=DT), torch.ones(3, 1, dtype=DT)), T, batch="per_sample")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_y0(bad):
    y0 = torch.tensor([1.0, bad], dtype=DT)
    with pytest.raises(NonFiniteError, match="y0 contains NaN or Inf"):
        odeserve.solve(rot, y0, T)
    with pytest.raises(NonFiniteError, match=r"y0\[1\] contains NaN or Inf"):
        odeserve.solve(lambda t, y: (y[1], -y[0]), (Y0[:1], y0[1:]), T)


def test_f_of_initial_state_non_finite():
    with pytest.raises(NonFiniteError, match=r"f\(t0, y0\) contains NaN or Inf"):
        odeserve.solve(lambda t, y: y / 0.0 * 0.0, Y0, T)  # 0/0 = NaN


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("kw,what", [({"rtol": -1e-6}, "rtol"), ({"atol": -1e-9}, "atol"),
                                     ({"rtol": math.nan}, "rtol"), ({"atol": math.inf}, "atol")])
def test_invalid_tolerances(kw, what):
    with pytest.raises(InvalidToleranceError, match=f"{what} must be non-negative and finite"):
        odeserve.solve(rot, Y0, T, **kw)


def test_both_tolerances_zero():
    with pytest.raises(InvalidToleranceError, match="both 0"):
        odeserve.solve(rot, Y0, T, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("kw", [{"rtol": 0.0, "atol": 1e-7}, {"rtol": 1e-6, "atol": 0.0}], ids=["rtol0", "atol0"])
def test_one_tolerance_zero_is_accepted(kw, time_limit):
    """Validation accepts one zero tolerance (pure absolute / pure relative control), so the
    solve must work — also when a component of y0 is 0 (Y0 = (1, 0)), where a pure relative
    scale is 0.  Some 10-30 steps are needed; max_steps=200 turns a stall into a quick failure."""
    with time_limit(30):
        sol = odeserve.solve(rot, Y0, T, max_steps=200, throw=False, **kw)
    assert sol.success, (Status(int(sol.status)).name, sol.stats)
    exact = torch.stack([torch.cos(T), torch.sin(T)], dim=-1)
    torch.testing.assert_close(sol.ys, exact, rtol=0, atol=1e-5)


def test_unknown_solver_lists_known_names():
    with pytest.raises(UnknownPluginError) as info:
        odeserve.solve(rot, Y0, T, solver="dopri")
    msg = str(info.value)
    assert "unknown solver 'dopri'" in msg
    for name in ALL:
        assert name in msg
    assert "Did you mean 'dopri5'" in msg or "Did you mean 'dopri8'" in msg
    assert isinstance(info.value, KeyError)
    assert not msg.startswith(("'", '"'))  # not KeyError's repr of the message


def test_unknown_controller_lists_known_names():
    with pytest.raises(UnknownPluginError, match=r"unknown controller 'pid'; known controllers: i, pi"):
        odeserve.solve(rot, Y0, T, solver="dopri5", controller="pid")


def test_unknown_sensitivity():
    with pytest.raises(UnknownPluginError, match=r"unknown sensitivity 'magic'; known sensitivities: adjoint, autograd"):
        odeserve.solve(rot, Y0, T, sensitivity="magic")


def test_bad_controller_options():
    with pytest.raises(InvalidOptionError, match="unknown controller option"):
        odeserve.solve(rot, Y0, T, controller_options={"gain": 2.0})
    with pytest.raises(InvalidOptionError, match="safety"):
        odeserve.solve(rot, Y0, T, controller="i", controller_options={"safety": 1.5})


@pytest.mark.parametrize("name", FIXED)
def test_dt_and_steps_together(name):
    with pytest.raises(InvalidOptionError, match="dt or steps, not both"):
        odeserve.solve(rot, Y0, T, solver=name, dt=0.1, steps=10)


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("kw", [{"dt": 0.1}, {"steps": 10}], ids=["dt", "steps"])
def test_fixed_grid_options_for_adaptive_solver(name, kw):
    with pytest.raises(InvalidOptionError, match=f"solver '{name}' is adaptive.*dt0"):
        odeserve.solve(rot, Y0, T, solver=name, **kw)


@pytest.mark.parametrize("kw,match", [
    ({"steps": 0}, "steps must be a positive integer"),
    ({"steps": 2.5}, "steps must be a positive integer"),
    ({"dt": -0.1}, "dt must be positive"),
    ({"dt": 0.0}, "dt must be positive"),
])
def test_bad_fixed_grid_values(kw, match):
    with pytest.raises(InvalidOptionError, match=match):
        odeserve.solve(rot, Y0, T, solver="rk4", **kw)


@pytest.mark.parametrize("kw,match", [
    ({"batch": "rows"}, "batch must be one of"),
    ({"loop": "for"}, "loop must be one of"),
    ({"max_steps": 0}, "max_steps must be a positive integer"),
    ({"dt0": -0.1}, "dt0 must be positive"),
    ({"dt_max": 0.0}, "dt_max must be positive"),
    ({"dt_min": -1.0}, "dt_min must be non-negative"),
])
def test_bad_option_values(kw, match):
    with pytest.raises(InvalidOptionError, match=match):
        odeserve.solve(rot, Y0, T, **kw)


def test_fixed_grid_longer_than_max_steps():
    with pytest.raises(InvalidOptionError, match="max_steps=5"):
        odeserve.solve(rot, Y0, T, solver="rk4", dt=0.01, max_steps=5)


def test_pure_relative_tolerance_with_a_zero_component(time_limit):
    """atol = 0 and a component that stays exactly 0 (y' = -y, y0 = (1, 0)): its error and
    its scale are both 0, which must count as 'no error', not NaN (a rejected step).  dt0 is
    given so that only the step loop's error norm is involved."""
    y0 = torch.tensor([1.0, 0.0], dtype=DT)
    with time_limit(30):
        sol = odeserve.solve(lambda t, y: -y, y0, [0.0, 1.0], rtol=1e-6, atol=0.0, dt0=0.1, max_steps=200, throw=False)
    assert sol.success, (Status(int(sol.status)).name, sol.stats)
    assert float(sol.ys[-1, 0]) == pytest.approx(math.exp(-1.0), rel=1e-5)
    assert float(sol.ys[-1, 1]) == 0.0


# ----------------------------------------------------------------------------- numerical failures


def _nan_after_half(t, y):
    """y' = -y for t ≤ 0.5; NaN afterwards (f 'blows up' mid-solve)."""
    bad = (t > 0.5).reshape(t.shape + (1,) * (y.ndim - t.ndim))
    return torch.where(bad, torch.full_like(y, math.nan), -y)


@pytest.mark.parametrize("name", ALL)
def test_nan_from_f_during_solve(name, time_limit):
    y0 = torch.tensor([1.0], dtype=DT)
    t = torch.tensor([0.0, 0.25, 0.75, 1.0], dtype=DT)
    with time_limit(30):
        sol = odeserve.solve(_nan_after_half, y0, t, solver=name, throw=False, **_loose(name))
    assert not sol.success
    assert int(sol.status) in (Status.NONFINITE, Status.DT_UNDERFLOW)
    assert torch.isnan(sol.ys[2:]).all()  # past the failure
    assert torch.equal(sol.ys[0], y0)
    # before it: the value the same solve gives without the NaN region, as accurately
    clean = odeserve.solve(lambda tt, y: -y, y0, t, solver=name, **_loose(name))
    if SOLVERS[name].obj.adaptive:
        opts = _loose(name)
        slack = abs(float(clean.ys[1, 0]) - math.exp(-0.25)) + 10 * (opts["atol"] + opts["rtol"])
        assert abs(float(sol.ys[1, 0]) - float(clean.ys[1, 0])) <= slack
    else:  # same grid, same arithmetic up to the failure
        assert torch.equal(sol.ys[1], clean.ys[1])
    if SOLVERS[name].obj.adaptive:
        assert float(sol.stats["t_final"]) == pytest.approx(0.5, abs=1e-3)
    with time_limit(30):
        with pytest.raises(SolveFailedError) as info:
            odeserve.solve(_nan_after_half, y0, t, solver=name, **_loose(name))
    err = info.value
    assert Status(int(sol.status)).name in str(err) and name in str(err)
    assert isinstance(err.solution, odeserve.Solution)
    assert err.solution.status.tolist() == sol.status.tolist()
    torch.testing.assert_close(err.solution.ys, sol.ys, equal_nan=True)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_step_size_underflow_ends_quickly(name, time_limit):
    """y' = y², y(0) = 1 blows up at t = 1; asked for t = 2 the solve must stop near t = 1
    with DT_UNDERFLOW (the step falls below t's float resolution), long before max_steps.
    (The numerical solution's pole is off the true one by about its global error, so the
    final time may be a little past 1.)"""
    y0 = torch.tensor([1.0], dtype=DT)
    t = torch.tensor([0.0, 0.5, 2.0], dtype=DT)
    rtol, atol = 1e-3, 1e-6  # the approach to the pole takes fewer steps at loose tolerance
    start = time.perf_counter()
    with time_limit(30):
        sol = odeserve.solve(lambda tt, y: y * y, y0, t, solver=name, rtol=rtol, atol=atol, throw=False)
    assert int(sol.status) == Status.DT_UNDERFLOW, Status(int(sol.status)).name
    assert int(sol.stats["steps"]) < 10_000
    assert abs(float(sol.stats["t_final"]) - 1.0) <= 100 * rtol
    assert float(sol.ys[1, 0]) == pytest.approx(2.0, rel=100 * rtol)
    assert torch.isnan(sol.ys[2]).all()
    assert time.perf_counter() - start < 30
    with pytest.raises(SolveFailedError, match="DT_UNDERFLOW"):
        odeserve.solve(lambda tt, y: y * y, y0, t, solver=name, rtol=rtol, atol=atol)


def test_dt_min_stops_the_solve():
    y0 = torch.tensor([1.0], dtype=DT)
    sol = odeserve.solve(lambda tt, y: y * y, y0, torch.tensor([0.0, 2.0], dtype=DT), dt_min=1e-3, throw=False)
    assert int(sol.status) == Status.DT_UNDERFLOW
    assert 0.9 < float(sol.stats["t_final"]) < 1.0
    assert int(sol.stats["steps"]) < 200


@pytest.mark.parametrize("name", ADAPTIVE)
def test_max_steps_gives_partial_result(name, time_limit):
    t = torch.linspace(0.0, 100.0, 101, dtype=DT)
    rtol, atol = tolerances(SOLVERS[name].obj.order)
    kw = dict(solver=name, rtol=rtol, atol=atol, max_steps=40)
    with time_limit(30):
        sol = odeserve.solve(rot, Y0, t, throw=False, **kw)
    assert int(sol.status) == Status.MAX_STEPS
    assert int(sol.stats["steps"]) == 40
    t_fin = float(sol.stats["t_final"])
    assert 0.0 < t_fin < 100.0
    reached = t <= t_fin
    assert int(reached.sum()) >= 2, f"40 steps should get past t = 1 (t_final = {t_fin})"
    assert torch.isnan(sol.ys[~reached]).all()
    # the outputs it reached are exactly those of the same solve without the limit (run to
    # the first output it missed, so that every step up to t_final is the same)
    k = int(reached.sum())
    full = odeserve.solve(rot, Y0, t[: k + 1], **{**kw, "max_steps": 10_000})
    assert torch.equal(sol.ys[reached], full.ys[:k])
    with pytest.raises(SolveFailedError, match="MAX_STEPS.*max_steps") as info:
        odeserve.solve(rot, Y0, t, **kw)
    assert int(info.value.solution.status) == Status.MAX_STEPS
