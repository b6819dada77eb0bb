"""The while_loop path (what compile and export use) must give eager gradients too:
torch.while_loop only differentiates carries whose start value requires grad."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import odeserve


@pytest.mark.parametrize("solver,kw", [("rk4", {"steps": 5}), ("dopri5", {"rtol": 1e-8, "atol": 1e-10})])
def test_parameter_gradients_through_while_loop_equal_python_loop(solver, kw):
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    y0 = torch.randn(3, 2, dtype=torch.float64)  # does not require grad
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    grads = []
    for loop in ("python", "while"):
        f.zero_grad()
        odeserve.solve(lambda t, y: f(y), y0, t, solver=solver, loop=loop, **kw).ys.pow(2).sum().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in f.parameters()]))
    assert grads[0].abs().max() > 1e-3
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_while_loop_marks_y0_for_grad_only_when_f_reads_a_tensor_that_requires_grad():
    """A frozen model solved with loop="while" in grad mode returns outputs that do not
    require grad (no loop graph kept); a module with no trainable parameters of its own that
    reads an outside tensor requiring grad still gets that tensor's exact gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double().requires_grad_(False)
    y0 = torch.randn(3, 2, dtype=torch.float64)
    t = [0.0, 0.5, 1.0]
    frozen = odeserve.solve(lambda t, y: net(y), y0, t, solver="dopri5", rtol=1e-8, atol=1e-10, loop="while")
    assert not frozen.ys.requires_grad
    with torch.no_grad():
        ref = odeserve.solve(lambda t, y: net(y), y0, t, solver="dopri5", rtol=1e-8, atol=1e-10)
    assert torch.allclose(frozen.ys, ref.ys, rtol=1e-10, atol=1e-12)

    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    class Scaled(nn.Module):  # no parameters: it reads ``scale`` from outside
        def forward(self, t, y):
            return scale * net(y)

    grads = []
    for loop in ("python", "while"):
        ys = odeserve.solve(Scaled(), y0, t, solver="dopri5", rtol=1e-8, atol=1e-10, loop=loop).ys
        grads.append(torch.autograd.grad(ys.pow(2).sum(), scale)[0])
    assert grads[0].abs() > 1e-3 and torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_const_is_a_literal_while_tracing_and_a_tensor_otherwise():
    from odeserve.solver import Const

    third = Const(1.0 / 3.0, torch.float64, torch.device("cpu"))
    assert third() is third.tensor and float(third) == 1.0 / 3.0  # eager: the one tensor

    class Scale(nn.Module):
        def forward(self, x):
            return x * third()

    x = torch.ones(3, dtype=torch.float64)
    program = torch.export.export(Scale(), (x,))
    assert not program.constants  # an op in the graph, no captured tensor
    assert torch.equal(program.module()(x), x / 3.0)  # every float64 digit kept
    with Const.as_tensors():
        assert len(torch.export.export(Scale(), (x,)).constants) == 1
        # Per thread: an export here does not turn a compile in another thread's literals
        # into captured tensors.
        seen: list[int] = []
        worker = threading.Thread(target=lambda: seen.append(len(torch.export.export(Scale(), (x,)).constants)))
        worker.start()
        worker.join()
        assert seen == [0]
    assert not torch.export.export(Scale(), (x,)).constants
    with pytest.raises(RuntimeError), Const.as_tensors():
        raise RuntimeError
    assert not torch.export.export(Scale(), (x,)).constants  # restored on the way out of an error too


@pytest.mark.parametrize("batch", ["per_sample", "joint"])
def test_unrolled_attempts_match_the_while_loop_or_report_running(batch):
    """AOTInductor's prefix model runs ``unrolled_attempts`` masked steps with no loop: with
    enough attempts it is the loop's answer to the last bit (rows that finish early stay
    frozen); with too few, unfinished rows come back RUNNING short of t1, never as a result."""
    from dataclasses import replace

    from odeserve._api import prepare

    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    y0 = torch.randn(3, 2, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [3.0]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    p = prepare(lambda t, y: f(y), y0, t, solver="dopri5", rtol=1e-6, atol=1e-8, loop="while", batch=batch)
    with torch.no_grad():
        ys, res = p.run(p.spec.flatten(y0))
        attempts = int((res.accepted + res.rejected).max())
        assert attempts >= 3 and bool((res.status == 0).all())
        ys_u, res_u = replace(p, unrolled_attempts=attempts + 2).run(p.spec.flatten(y0))
        assert torch.equal(ys_u, ys) and torch.equal(res_u.status, res.status)
        assert torch.equal(res_u.accepted, res.accepted) and torch.equal(res_u.rejected, res.rejected)
        _, short = replace(p, unrolled_attempts=1).run(p.spec.flatten(y0))
    assert bool((short.status == odeserve.Status.RUNNING).all()) and bool((short.t < 1.0).all())
