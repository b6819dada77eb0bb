"""odeserve.compat against torchdiffeq itself: same signature, same layout, same answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odeserve import compat
from odeserve.errors import InvalidOptionError

torchdiffeq = pytest.importorskip("torchdiffeq")

torch.manual_seed(0)


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([t.expand(y.shape[0], 1), y], dim=-1))


@pytest.fixture
def problem():
    f = Field().double()
    y0 = torch.randn(4, 2, dtype=torch.float64)
    t = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    return f, y0, t


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "heun3"])
def test_fixed_methods_match_torchdiffeq_on_the_same_grid(problem, method):
    f, y0, t = problem
    ours = compat.odeint(f, y0, t, method=method, options={"step_size": 0.05})
    theirs = torchdiffeq.odeint(f, y0, t, method=method, options={"step_size": 0.05})
    assert ours.shape == theirs.shape == (5, 4, 2)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8", "adaptive_heun"])
def test_adaptive_methods_meet_tolerance_like_torchdiffeq(problem, method):
    """Same layout as torchdiffeq, and at least its accuracy against a tight reference
    (torchdiffeq's own bosh3 misses 1e-8 by 1e3×, so it is no reference itself)."""
    f, y0, t = problem
    tol = 1e-5 if method == "adaptive_heun" else 1e-8
    with torch.no_grad():
        ref = compat.odeint(f, y0, t, method="dopri8", rtol=1e-13, atol=1e-13)
        ours = compat.odeint(f, y0, t, method=method, rtol=tol, atol=tol)
        theirs = torchdiffeq.odeint(f, y0, t, method=method, rtol=tol, atol=tol)
    assert ours.shape == theirs.shape
    ours_err = (ours - ref).abs().max().item()
    theirs_err = (theirs - ref).abs().max().item()
    assert ours_err < 50 * tol
    assert ours_err < 3 * theirs_err + tol


def test_tuple_state_and_backward_time(problem):
    def osc(t, state):
        x, v = state
        return v, -x

    x0, v0 = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    t = torch.linspace(0.0, -2.0, 4, dtype=torch.float64)
    ours = compat.odeint(osc, (x0, v0), t, rtol=1e-9, atol=1e-11)
    theirs = torchdiffeq.odeint(osc, (x0, v0), t, rtol=1e-9, atol=1e-11)
    assert isinstance(ours, tuple) and len(ours) == 2
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape == (4, 1)
        assert torch.allclose(a, b, atol=1e-8)
    assert torch.allclose(ours[0][:, 0], torch.cos(t), atol=1e-8)


def test_gradients_through_odeint_and_odeint_adjoint_match_torchdiffeq(problem):
    f, y0, t = problem
    grads = {}
    for name, fn in [
        ("ours", compat.odeint),
        ("ours_adjoint", compat.odeint_adjoint),
        ("theirs", torchdiffeq.odeint),
        ("theirs_adjoint", torchdiffeq.odeint_adjoint),
    ]:
        f.zero_grad()
        y = y0.clone().requires_grad_(True)
        out = fn(f, y, t, rtol=1e-10, atol=1e-12, method="dopri5")
        (out**2).sum().backward()
        grads[name] = torch.cat([y.grad.reshape(-1)] + [p.grad.reshape(-1) for p in f.parameters()])
    ref = grads["theirs"]
    for name, g in grads.items():
        assert torch.allclose(g, ref, rtol=1e-6, atol=1e-8), name


def test_seminorm_and_adjoint_options_are_translated(problem):
    f, y0, t = problem
    y = y0.clone().requires_grad_(True)
    out = compat.odeint_adjoint(f, y, t, method="dopri5", adjoint_options={"norm": "seminorm"}, adjoint_method="dopri5")
    out.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def test_unsupported_method_and_option_are_named(problem):
    f, y0, t = problem
    with pytest.raises(InvalidOptionError, match="undershoots"):
        compat.odeint(f, y0, t, method="fehlberg2")
    with pytest.raises(InvalidOptionError, match="explicit_adams"):
        compat.odeint(f, y0, t, method="explicit_adams")
    with pytest.raises(InvalidOptionError, match="dopri5"):
        compat.odeint(f, y0, t, method="dopri")
    with pytest.raises(InvalidOptionError, match="perturb"):
        compat.odeint(f, y0, t, method="rk4", options={"perturb": True})
