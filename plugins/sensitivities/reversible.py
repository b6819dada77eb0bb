"""``reversible``: the exact adjoint of an algebraically reversible solver, O(1) memory."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from odeserve._api import PreparedSolve
from odeserve._loop import fixed_eager, fixed_while
from odeserve.errors import InvalidOptionError
from odeserve.solver import Sensitivity

from ._common import (
    ResultBox,
    adjoint_params_option,
    method_params,
    fixed_result,
    module_names,
    parse_options,
    pinned,
    refuse_failed,
    replay_fixed,
)

__all__ = ["ReversibleAdjoint"]


class ReversibleAdjoint(Sensitivity):
    """Back-propagate through a reversible solver (``reversible_heun``) without storing the
    trajectory: walking back, each step's start state is reconstructed from its end state by
    the solver's algebraic inverse (``backward_step``), and the step is recomputed from it
    with autograd.  The gradient is that of the discretised solve (equal to ``autograd``'s
    up to the rounding of the reconstruction) with memory independent of the number of steps
    (Kidger, Foster, Li & Lyons 2021).

    Options: ``adjoint_params`` (the tensors to differentiate besides ``y0``; default: the
    parameters of ``f`` when it is an ``nn.Module``; list closed-over tensors here).

    Needs a solver with ``reversible = True`` (otherwise :class:`~odeserve.InvalidOptionError`
    when the solve starts).  Supported: tuple states, both batch modes, ``loop="python"``
    and ``"while"``.  A failed forward solve makes the backward pass raise
    :class:`~odeserve.SolveFailedError`.  Not twice differentiable.
    """

    name = "reversible"

    def __init__(self, **options: Any) -> None:
        opts = parse_options(self.name, options, {"adjoint_params": None})
        self.adjoint_params = adjoint_params_option(opts["adjoint_params"], self.name)

    def run(self, prepared: Any, y0: Tensor) -> tuple[Tensor, Any]:
        solver = prepared.problem.solver
        if not getattr(solver, "reversible", False) or prepared.grid is None:
            raise InvalidOptionError(
                f"sensitivity 'reversible' needs an algebraically reversible fixed-step solver (e.g. "
                f"solver='reversible_heun'); {prepared.solver_name!r} is not one — use sensitivity='adjoint' "
                "or 'checkpoint' with it"
            )
        params = method_params(self.name, prepared, y0, self.adjoint_params)
        if params is None:
            return prepared.run(y0)
        box = ResultBox()
        ys = _ReversibleFunction.apply(prepared, box, module_names(prepared.f, params), y0, *params)
        return ys, box.res


class _ReversibleFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, prepared: PreparedSolve, box: ResultBox, names: list[str] | None, y0: Tensor, *params: Tensor
    ) -> Tensor:
        P, grid = prepared.problem, prepared.grid
        assert grid is not None
        loop = fixed_while if prepared.loop == "while" else fixed_eager
        ys_int, s_end = loop(P, grid, P.solver.augment(P.rhs, P.t0, y0))
        width = y0.shape[-1]
        ys_int, y1 = P.solver.project(ys_int, width), P.solver.project(s_end, width)
        res = fixed_result(prepared, P, ys_int, y1)
        box.res = res
        ctx.prepared, ctx.names, ctx.params, ctx.status = prepared, names, params, res.status
        ctx.save_for_backward(y0, s_end)
        return torch.cat([y0.unsqueeze(0), ys_int, y1.unsqueeze(0)])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        refuse_failed(ctx.status, ReversibleAdjoint.name)
        y0, s_end = ctx.saved_tensors
        prepared = pinned(ctx.prepared, ctx.names, ctx.params)
        P, grid = prepared.problem, prepared.grid
        times = grid.times  # indexed per step: unbinding it up front costs ~1 KB per step

        def reconstruct(n: int, s_next: Tensor) -> Tensor:
            with torch.no_grad():
                return P.solver.backward_step(P.rhs, times[n + 1], s_next, times[n + 1] - times[n])

        grad_y0, grads = replay_fixed(prepared, ctx.params, y0, g, s_end, reconstruct)
        return (None, None, None, grad_y0, *grads)
