"""``adjoint``: the back-solve adjoint (Pontryagin; Chen et al. 2018), O(1) memory in the steps."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from odeserve._api import PreparedSolve, _positive
from odeserve._loop import FixedGrid, Problem
from odeserve.errors import InvalidOptionError, SolveFailedError
from odeserve.registry import get_registry
from odeserve.solver import Sensitivity, Solver

from ._common import (
    ResultBox,
    adjoint_params_option,
    RhsVJP,
    SeminormProblem,
    method_params,
    module_names,
    output_grid_points,
    parse_options,
    refuse_failed,
)

__all__ = ["AdjointVJP"]

DEFAULTS: dict[str, Any] = {
    "adjoint_params": None,
    "adjoint_rtol": None,
    "adjoint_atol": None,
    "adjoint_solver": None,
    "seminorm": False,
}


class AdjointVJP(Sensitivity):
    """Gradients from one backward solve, ``t1 → t0``, of the augmented system

        d/dt [z, a, a_θ] = [f(z, t, θ), −aᵀ∂f/∂z, −aᵀ∂f/∂θ],   start [z(t1), ∂L/∂z(t1), 0]

    with both products from a single VJP of ``f`` per evaluation.  Passing each output time
    ``t_i`` the backward solve adds ``∂L/∂z(t_i)`` to ``a`` and restarts ``z`` from the
    forward's stored output there (those are kept anyway); in between, ``z`` is re-solved
    backwards, so the gradient carries the back-solve's error (it matches ``autograd`` to
    the solve's tolerance, not to rounding).  Memory does not grow with the number of steps.

    Options (``sensitivity_options``):

    - ``adjoint_params``: the tensors to differentiate besides ``y0``; default: the
      parameters of ``f`` when ``f`` is an ``nn.Module``.  List tensors ``f`` only closes
      over here, or they get no gradient.
    - ``adjoint_rtol``, ``adjoint_atol``: the backward solve's tolerances (default: the
      forward's; 1e-7 / 1e-9 after a fixed-step forward with an adaptive ``adjoint_solver``).
    - ``adjoint_solver``: the backward solve's solver (default: the forward's).  A
      fixed-step one replays the forward's grid backwards, so it needs a fixed-step forward.
    - ``seminorm``: error control on ``z`` and ``a`` only, not ``a_θ`` (fewer backward steps).

    Supported: every solver, tuple states, ``loop="python"`` and ``"while"`` (the backward
    solve is always the Python loop).  ``batch="joint"``: one joint backward solve.
    ``batch="per_sample"``: with parameters to differentiate, the backward solve is joint
    (one shared step size) so that ``a_θ`` is a single joint adjoint for the whole batch
    (never one per sample); with only ``y0`` to differentiate it is per-sample too.  A failed
    forward solve makes the backward pass raise :class:`~odeserve.SolveFailedError`, as does a
    failed backward solve.  Not twice differentiable.
    """

    name = "adjoint"

    def __init__(self, **options: Any) -> None:
        opts = parse_options(self.name, options, DEFAULTS)
        self.adjoint_params = adjoint_params_option(opts["adjoint_params"], self.name)
        rtol, atol = opts["adjoint_rtol"], opts["adjoint_atol"]
        self.rtol = None if rtol is None else _positive("adjoint_rtol", rtol, allow_zero=True)
        self.atol = None if atol is None else _positive("adjoint_atol", atol, allow_zero=True)
        if self.rtol == 0 and self.atol == 0:
            raise InvalidOptionError("adjoint_rtol and adjoint_atol are both 0: at least one must be positive")
        solver = opts["adjoint_solver"]
        if isinstance(solver, str):
            solver = get_registry().solver(solver)
        elif solver is not None and not (isinstance(solver, type) and issubclass(solver, Solver)):
            raise InvalidOptionError(f"adjoint_solver must be a registered solver name or a Solver class, got {solver!r}")
        self.solver_cls: type[Solver] | None = solver
        if not isinstance(opts["seminorm"], bool):
            raise InvalidOptionError(f"seminorm must be True or False, got {opts['seminorm']!r}")
        self.seminorm: bool = opts["seminorm"]

    def run(self, prepared: Any, y0: Tensor) -> tuple[Tensor, Any]:
        params = method_params(self.name, prepared, y0, self.adjoint_params)
        if params is None:
            return prepared.run(y0)
        box = ResultBox()
        names = module_names(prepared.f, params)
        ys = _AdjointFunction.apply(self, prepared, box, names, y0, *params)
        return ys, box.res

    # ------------------------------------------------------------------ backward solve
    def backward(
        self, prepared: PreparedSolve, names: Sequence[str] | None, params: Sequence[Tensor], ys: Tensor, g: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        P = prepared.problem
        T, rows, width = ys.shape
        layout = _Layout(rows, width, [p.numel() for p in params], P.per_sample and not params)
        vjp = RhsVJP(prepared, names, params)

        def rhs(t: Tensor, s: Tensor) -> Tensor:
            z, a, _ = layout.split(s)
            fz, vz, vp = vjp(t, z, a)
            return layout.join(fz, -vz, -torch.cat([v.reshape(-1) for v in vp]) if vp else None)

        back, fixed = self._backward_problem(prepared, rhs, layout.per_sample)
        if self.seminorm and params:
            back = SeminormProblem.of(back, 2 * rows * width if not layout.per_sample else 2 * width)
        points = output_grid_points(prepared.grid) if fixed else []
        a, a_theta = g[-1], ys.new_zeros(layout.n_params)
        dt0 = None  # each segment after the first starts from the step its predecessor proposed
        for i in range(T - 1, 0, -1):
            grid = None
            if fixed:
                assert prepared.grid is not None
                seg = prepared.grid.times[points[i - 1] : points[i] + 1].flip(0)
                grid = FixedGrid(seg, [-1] * (seg.shape[0] - 1))
            seg_problem = dataclasses.replace(back, t0=prepared.t[i], t1=prepared.t[i - 1], dt0=dt0)
            segment = dataclasses.replace(prepared, problem=seg_problem, grid=grid, loop="python")
            out, res = segment.run(layout.join(ys[i], a, a_theta))
            if not bool((res.status == 0).all()):
                codes = sorted(set(res.status.reshape(-1).tolist()))
                raise SolveFailedError(
                    f"the adjoint's backward solve from t={float(prepared.t[i])} to t={float(prepared.t[i - 1])} "
                    f"failed (status {codes}); loosen adjoint_rtol/adjoint_atol, raise max_steps or try seminorm=True",
                    None,
                )
            if not fixed and res.dt is not None:
                h = res.dt.detach().abs().min()
                dt0 = h if bool(torch.isfinite(h) & (h > 0)) else None
            _, a, a_theta = layout.split(out[-1])
            a = a + g[i - 1]
        pieces = torch.split(a_theta, [p.numel() for p in params])
        return a, [v.reshape(p.shape) for v, p in zip(pieces, params)]

    def _backward_problem(self, prepared: PreparedSolve, rhs: Any, per_sample: bool) -> tuple[Problem, bool]:
        P = prepared.problem
        solver = P.solver if self.solver_cls is None else self.solver_cls(P.solver.dtype, P.solver.device)
        back = dataclasses.replace(
            P, rhs=rhs, solver=solver, per_sample=per_sample, direction=-P.direction,
            t_interior=P.t_interior[:0], dt0=None,
        )
        if not solver.adaptive:
            if prepared.grid is None:
                raise InvalidOptionError(
                    f"adjoint_solver {type(solver).__name__} is fixed-step but the forward solve is adaptive: the "
                    "backward solve has no grid to follow; pick an adaptive adjoint_solver or a fixed-step forward"
                )
            return back, True
        exponent = (solver.error_order or solver.order) + 1
        controller = P.controller
        if controller is None or getattr(controller, "k", None) != exponent:
            pi = get_registry().controller("pi")
            controller = pi(error_exponent=exponent, dtype=solver.dtype, device=solver.device)
        rtol = self.rtol if self.rtol is not None else (float(P.rtol) if P.rtol is not None else 1e-7)
        atol = self.atol if self.atol is not None else (float(P.atol) if P.atol is not None else 1e-9)
        return dataclasses.replace(back.with_tolerances(rtol, atol), controller=controller), False


class _Layout:
    """The augmented state ``[z, a, a_θ]`` as the loop's ``(rows, W)``: one row holding all of
    it for a joint backward solve, or one row per sample (``[z_i, a_i]``, no ``a_θ``)."""

    def __init__(self, rows: int, width: int, param_sizes: list[int], per_sample: bool) -> None:
        self.rows, self.width, self.per_sample = rows, width, per_sample
        self.n_params = sum(param_sizes)

    def join(self, z: Tensor, a: Tensor, a_theta: Tensor | None) -> Tensor:
        if self.per_sample:
            return torch.cat([z, a], dim=-1)
        parts = [z.reshape(1, -1), a.reshape(1, -1)]
        if a_theta is not None and self.n_params:
            parts.append(a_theta.reshape(1, -1))
        return torch.cat(parts, dim=-1)

    def split(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.per_sample:
            return s[:, : self.width], s[:, self.width :], s.new_zeros(0)
        n = self.rows * self.width
        flat = s.reshape(-1)
        return flat[:n].reshape(self.rows, self.width), flat[n : 2 * n].reshape(self.rows, self.width), flat[2 * n :]


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, method: AdjointVJP, prepared: PreparedSolve, box: ResultBox, names: list[str] | None,
        y0: Tensor, *params: Tensor,
    ) -> Tensor:
        ys, res = prepared.run(y0)
        box.res = res
        ctx.method, ctx.prepared, ctx.names, ctx.params, ctx.status = method, prepared, names, params, res.status
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        refuse_failed(ctx.status, AdjointVJP.name)
        (ys,) = ctx.saved_tensors
        grad_y0, grads = ctx.method.backward(ctx.prepared, ctx.names, ctx.params, ys, g)
        return (None, None, None, None, grad_y0, *grads)

