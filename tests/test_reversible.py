"""Reversible Heun (Kidger et al. 2021, ODE case) and the ``reversible`` sensitivity: order 2,
an exact algebraic inverse, and a gradient equal to the discretised one with memory that
does not grow with the number of steps."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from odeserve import get_registry, solve
from odeserve.plugins.solvers import TABLEAUS, ReversibleHeun

DT = torch.float64


class Field(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT)

    def forward(self, t, y):
        return self.net(y) * torch.cos(t).reshape(-1, 1)


def test_registered_as_a_solver_not_a_tableau():
    cls = get_registry().solver("reversible_heun")
    assert cls is ReversibleHeun
    assert (cls.order, cls.adaptive, cls.reversible, cls.evals_per_step) == (2, False, True, 1)
    assert "reversible_heun" not in TABLEAUS


def test_order_two():
    """Harmonic oscillator y'' = −y on [0, 2]: the error falls as dt²."""
    f = lambda t, y: torch.stack([y[1], -y[0]])  # noqa: E731
    y0 = torch.tensor([1.0, 0.0], dtype=DT)
    exact = torch.tensor([math.cos(2.0), -math.sin(2.0)], dtype=DT)
    steps = [40, 80, 160]
    errs = [float((solve(f, y0, [0.0, 2.0], solver="reversible_heun", steps=n).ys[-1] - exact).norm()) for n in steps]
    slopes = [math.log(errs[i] / errs[i + 1], 2) for i in range(len(errs) - 1)]
    assert all(1.8 < s < 2.3 for s in slopes), (errs, slopes)


def test_backward_step_inverts_step():
    """200 steps forward and 200 back through ``backward_step`` recover the start state."""
    f = Field()
    solver = ReversibleHeun(DT, torch.device("cpu"))
    rhs = lambda t, y: f(t, y)  # noqa: E731
    grid = torch.linspace(0.0, 2.0, 201, dtype=DT)
    dts = torch.diff(grid)
    state0 = solver.augment(rhs, grid[0], torch.tensor([[0.4, -1.1], [2.0, 0.3]], dtype=DT))
    with torch.no_grad():
        state = state0
        for n in range(200):
            state = solver.step(rhs, grid[n], state, dts[n], None).y
        for n in range(199, -1, -1):
            state = solver.backward_step(rhs, grid[n + 1], state, dts[n])
    assert torch.allclose(state, state0, rtol=0, atol=1e-12)


def test_tuple_state_outputs_the_state_only():
    f = lambda t, y: (y[1], -y[0])  # noqa: E731
    y0 = (torch.ones(3, dtype=DT), torch.zeros(3, dtype=DT))
    sol = solve(f, y0, [0.0, 0.5, 1.0], solver="reversible_heun", steps=50)
    assert [tuple(c.shape) for c in sol.ys] == [(3, 3), (3, 3)]
    assert torch.allclose(sol.ys[0][-1], torch.full((3,), math.cos(1.0), dtype=DT), atol=1e-3)


def _grads(method, loop="python", steps=30):
    f = Field(seed=1)
    y0 = torch.tensor([[0.4, -1.1], [2.0, 0.3]], dtype=DT, requires_grad=True)
    ys = solve(f, y0, [0.0, 0.7, 1.5], solver="reversible_heun", steps=steps, sensitivity=method, loop=loop).ys
    loss = (ys**2).sum() + ys[1].sin().sum()
    grads = torch.autograd.grad(loss, [y0] + list(f.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("loop", ["python", "while"])
def test_reversible_gradient_is_the_discretised_gradient(loop):
    ref = _grads("autograd")
    got = _grads("reversible", loop=loop)
    back_solve = _grads("adjoint")
    rel = lambda g: float((g - ref).norm() / ref.norm())  # noqa: E731
    assert rel(got) <= 1e-12
    # the back-solve adjoint on the same solver only matches to the discretisation error
    assert rel(back_solve) > 100 * rel(got)


def _saved_bytes(method, steps):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    f = Field(seed=2)
    y0 = torch.tensor([[0.4, -1.1]], dtype=DT, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ys = solve(f, y0, [0.0, 1.0], solver="reversible_heun", steps=steps, sensitivity=method).ys
    ys.sum().backward()
    return total[0]


def test_reversible_memory_does_not_grow_with_steps():
    assert _saved_bytes("reversible", 10) == _saved_bytes("reversible", 200)
    assert _saved_bytes("autograd", 200) > 10 * _saved_bytes("autograd", 10)
