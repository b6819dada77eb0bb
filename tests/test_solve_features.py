"""solve() features: tuple states, backward time, outputs at the requested times, step-size
controllers and their bounds (dt0, dt_max), float32."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

import odeserve

try:
    from .problems import cos_growth, make_van_der_pol, tolerances, van_der_pol
except ImportError:
    from problems import cos_growth, make_van_der_pol, tolerances, van_der_pol

DT = torch.float64
SOLVERS = odeserve.get_registry().entries("solver")
ALL = sorted(SOLVERS)
ADAPTIVE = sorted(n for n, e in SOLVERS.items() if e.obj.adaptive)


def _opts(name: str, steps: int = 16) -> dict:
    cls = SOLVERS[name].obj
    if cls.adaptive:
        rtol, atol = tolerances(cls.order)
        return {"rtol": rtol, "atol": atol}
    return {"steps": steps}


# ----------------------------------------------------------------------------- tuple states

W = torch.tensor([1.0, 2.0, 0.5], dtype=DT)  # three oscillators x'' = -w² x in one state


def _system(t, y):
    x, v = y
    return v, -(W**2) * x


def _flat(t, y):
    x, v = y[:3], y[3:]
    return torch.cat([v, -(W**2) * x])


@pytest.mark.parametrize("name", ALL)
def test_tuple_state_equals_flat_state(name):
    """The article's system solver: (position, velocity) as a tuple of tensors gives the
    tuple back, each component at every time, and exactly the flat solve's numbers."""
    x0 = torch.tensor([1.0, 0.5, -2.0], dtype=DT)
    v0 = torch.tensor([0.0, 1.0, 0.25], dtype=DT)
    t = torch.tensor([0.0, 0.7, 1.5, 2.0], dtype=DT)
    sol = odeserve.solve(_system, (x0, v0), t, solver=name, **_opts(name, 64))
    flat = odeserve.solve(_flat, torch.cat([x0, v0]), t, solver=name, **_opts(name, 64))
    assert sol.success
    assert isinstance(sol.ys, tuple) and len(sol.ys) == 2
    assert sol.ys[0].shape == (4, 3) and sol.ys[1].shape == (4, 3)
    assert torch.equal(sol.ys[0][0], x0) and torch.equal(sol.ys[1][0], v0)
    torch.testing.assert_close(torch.cat(sol.ys, dim=-1), flat.ys, rtol=1e-14, atol=1e-15)
    assert int(sol.stats["steps"]) == int(flat.stats["steps"])
    # and it is the oscillator (a sanity bound that euler with 64 steps meets)
    tn = t.reshape(-1, 1)
    x_exact = x0 * torch.cos(W * tn) + v0 / W * torch.sin(W * tn)
    assert float((sol.ys[0] - x_exact).abs().max()) < 0.2


# ----------------------------------------------------------------------------- backward time


@pytest.mark.parametrize("name", ALL)
def test_backward_time_mirrors_forward(name):
    """Integrating y' = cos(t) y from t = 2 down to 0 is integrating z(s) = y(2 - s),
    z' = -cos(2 - s) z, forward: same steps, same values (up to rounding of the times)."""
    y2 = torch.tensor([math.exp(math.sin(2.0))], dtype=DT)
    t_back = torch.tensor([2.0, 1.5, 0.75, 0.0], dtype=DT)
    back = odeserve.solve(cos_growth.f, y2, t_back, solver=name, **_opts(name, 32))
    fwd = odeserve.solve(lambda s, z: -torch.cos(2.0 - s) * z, y2, 2.0 - t_back, solver=name, **_opts(name, 32))
    assert back.success and fwd.success
    assert torch.equal(back.ys[0], y2)
    assert torch.equal(back.ts, t_back)
    torch.testing.assert_close(back.ys, fwd.ys, rtol=1e-12, atol=1e-14)
    assert int(back.stats["steps"]) == int(fwd.stats["steps"])
    assert float(back.stats["t_final"]) == 0.0
    exact = torch.exp(torch.sin(t_back)).reshape(-1, 1)
    assert float((back.ys - exact).abs().max()) < 0.2  # it went the right way (y(0) = 1, not e^±...)


def test_backward_per_sample_and_dense():
    y2 = torch.tensor([[1.0], [2.0], [0.5]], dtype=DT) * math.exp(math.sin(2.0))
    t_back = torch.linspace(2.0, 0.0, 21, dtype=DT)
    sol = odeserve.solve(cos_growth.f, y2, t_back, batch="per_sample", rtol=1e-8, atol=1e-10)
    exact = torch.exp(torch.sin(t_back)).reshape(-1, 1, 1) * torch.tensor([1.0, 2.0, 0.5], dtype=DT).reshape(1, 3, 1)
    torch.testing.assert_close(sol.ys, exact, rtol=1e-6, atol=0)
    assert sol.stats["t_final"].tolist() == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("batch", ["joint", "per_sample"])
@pytest.mark.parametrize("name", ALL)
def test_outputs_at_requested_times(name, batch):
    """``ts`` is the requested grid, ``ys[0]`` is ``y0`` bit for bit, one output per time."""
    y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=DT) / 3.0  # values with inexact binary digits
    t = [0.0, 0.1, 0.65, 1.0]
    sol = odeserve.solve(van_der_pol.f, y0, t, solver=name, batch=batch, **_opts(name, 20))
    assert sol.batch == batch and sol.solver == name
    assert torch.equal(sol.ts, torch.tensor(t, dtype=DT))
    assert sol.ys.shape == (4, 2, 2) and sol.ys.dtype == DT
    assert torch.equal(sol.ys[0], y0)
    for key in ("nfe", "steps", "accepted", "rejected"):
        assert key in sol.stats
    ref = np.stack([
        dataclasses.replace(van_der_pol, name=f"vdp_{i}", y0=tuple(y0[i].tolist()), t1=1.0).solution(np.array(t))
        for i in range(2)
    ], axis=1)
    assert np.abs(sol.ys.numpy() - ref).max() < 0.1  # values of this solution (euler: 20 steps)


def test_float32():
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float32)
    t = torch.tensor([0.0, 1.0, 2.0])
    ref = van_der_pol.solution(np.array([0.0, 1.0, 2.0]))
    for kw in ({"rtol": 1e-5, "atol": 1e-6}, {"solver": "rk4", "steps": 40}):
        sol = odeserve.solve(van_der_pol.f, y0, t, **kw)
        assert sol.ys.dtype == torch.float32 and sol.ts.dtype == torch.float32
        assert np.abs(sol.ys.numpy() - ref).max() < 1e-3, kw


# ----------------------------------------------------------------------------- controllers

VDP5 = make_van_der_pol(5.0)
VDP5_Y0 = torch.tensor([2.0, 0.0], dtype=DT)
VDP5_T = torch.tensor([0.0, 3.0], dtype=DT)


def _vdp5(name: str, **kw):
    return odeserve.solve(VDP5, VDP5_Y0, VDP5_T, solver=name, max_steps=50_000, **_opts(name), **kw)


def test_i_and_pi_controllers_both_work():
    ref = van_der_pol.solution(np.array([0.0, 3.5, 7.0]))
    t = torch.tensor([0.0, 3.5, 7.0], dtype=DT)
    for controller in ("i", "pi"):
        sol = odeserve.solve(van_der_pol.f, van_der_pol.y0_tensor(), t, controller=controller, rtol=1e-6, atol=1e-9)
        err = np.abs(sol.ys.numpy() - ref).max(axis=-1)
        assert (err <= 10 * (1e-9 + 1e-6 * np.abs(ref).max(axis=-1))).all(), (controller, err)


def test_pi_controller_rejects_less_than_i():
    """Van der Pol, mu = 5: summed over the adaptive solvers, PI control rejects no more
    steps than I control, and for each solver takes a similar number of steps (≤ 1.2×);
    and the two really are different controllers."""
    rejected = {"i": 0, "pi": 0}
    for name in ADAPTIVE:
        sols = {c: _vdp5(name, controller=c) for c in ("i", "pi")}
        for c, s in sols.items():
            assert s.success, (name, c)
            rejected[c] += int(s.stats["rejected"])
        steps = {c: int(s.stats["steps"]) for c, s in sols.items()}
        assert steps["pi"] <= 1.2 * steps["i"], (name, steps)
        assert not torch.equal(sols["i"].ys, sols["pi"].ys), name
    assert rejected["pi"] <= rejected["i"], rejected


def test_controller_options_are_used():
    cautious = _vdp5("dopri5", controller_options={"safety": 0.5})
    default = _vdp5("dopri5")
    assert int(cautious.stats["accepted"]) > 1.2 * int(default.stats["accepted"])
    capped = _vdp5("dopri5", controller="i", controller_options={"factor_max": 1.2})
    # growth capped at 1.2 per step: from a tiny first step, many more steps
    assert int(capped.stats["accepted"]) > int(_vdp5("dopri5", controller="i").stats["accepted"])


def _constant(t, y):
    """y' = 1: every RK method is exact, the error estimate is 0, so the controller always
    asks for its largest growth and only the bounds limit the step."""
    return torch.ones_like(y)


@pytest.mark.parametrize("name", ADAPTIVE)
@pytest.mark.parametrize("dt0", [None, 0.05, 0.5], ids=["auto", "small_dt0", "large_dt0"])
def test_dt_max_is_respected(name, dt0):
    y0 = torch.tensor([0.0], dtype=DT)
    sol = odeserve.solve(_constant, y0, [0.0, 1.0], solver=name, dt_max=0.1, dt0=dt0)
    assert sol.success
    assert int(sol.stats["accepted"]) >= 10, (
        f"{name}: {int(sol.stats['accepted'])} steps over a span of 1 with dt_max = 0.1 (dt0 = {dt0})"
    )
    assert float(sol.ys[-1, 0]) == pytest.approx(1.0, abs=1e-12)


def test_dt_max_on_a_real_problem():
    sol = odeserve.solve(van_der_pol.f, van_der_pol.y0_tensor(), [0.0, 2.0], dt_max=0.05, rtol=1e-3, atol=1e-6)
    assert int(sol.stats["accepted"]) >= 40
    free = odeserve.solve(van_der_pol.f, van_der_pol.y0_tensor(), [0.0, 2.0], rtol=1e-3, atol=1e-6)
    assert int(free.stats["accepted"]) < 40  # so the bound is what made the difference


@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "backward"])
@pytest.mark.parametrize("name", ADAPTIVE)
def test_dt0_is_the_first_step(name, direction):
    """With dt0 the first step spans exactly [t0, t0 ± dt0]: its stage times lie there and
    reach its end (every built-in adaptive step evaluates f at t + dt)."""
    calls = []

    def f(t, y):
        calls.append(float(t))
        return -y

    t0, dt0 = 1.0, 0.0123
    t1 = t0 + direction * 2.0
    sol = odeserve.solve(f, torch.tensor([1.0], dtype=DT), [t0, t1], solver=name, dt0=dt0, **_opts(name))
    assert sol.success
    eps = SOLVERS[name].obj.evals_per_step
    lo, hi = sorted((t0, t0 + direction * dt0))
    first = list(itertools.takewhile(lambda c: lo - 1e-15 <= c <= hi + 1e-15, calls))
    # the first step's stages (and any retries of it) come before anything past t0 ± dt0
    assert len(first) >= 1 + eps, (calls[: 2 + eps], lo, hi)
    assert max(abs(c - t0) for c in first) == pytest.approx(dt0, rel=1e-12), first
    # the automatic choice is something else
    calls.clear()
    odeserve.solve(f, torch.tensor([1.0], dtype=DT), [t0, t1], solver=name, **_opts(name))
    assert all(abs(abs(c - t0) - dt0) > 1e-9 for c in calls)
