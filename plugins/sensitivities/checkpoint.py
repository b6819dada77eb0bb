"""``checkpoint``: the adjoint that replays the forward discretisation step by step."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from odeserve._api import PreparedSolve
from odeserve._loop import AdaptiveState, FixedGrid, LoopResult, Problem, adaptive_init, adaptive_step, fixed_eager
from odeserve.solution import Status
from odeserve.solver import Sensitivity

from ._common import (
    ResultBox,
    adjoint_params_option,
    add_grads,
    method_params,
    fixed_result,
    module_names,
    output_grid_points,
    parse_options,
    pinned,
    refuse_failed,
    replay_fixed,
)

__all__ = ["Checkpointed"]

RUNNING = int(Status.RUNNING)


class Checkpointed(Sensitivity):
    """Store where every accepted step started; on the way back recompute each step locally
    with autograd and back-propagate through it (newest first).

    The gradient is that of the discretised solve, the same as ``autograd``'s to rounding,
    while memory is O(steps × state) — one loop state per accepted step (plus its time,
    step size and controller memory) — instead of every stage's activations.  The backward
    pass costs one more f evaluation per step than the forward's (the step's start
    derivative is recomputed rather than stored).

    Options: ``adjoint_params`` (the tensors to differentiate besides ``y0``; default: the
    parameters of ``f`` when it is an ``nn.Module``; list closed-over tensors here).

    Supported: every solver, tuple states, both batch modes (per-sample: each sample's own
    steps are replayed; finished samples stay in the batch, no compaction).  The forward
    pass is always the Python loop (``loop="while"`` runs as it): adaptive solves are driven
    here, step by step, through the core :func:`adaptive_step`, to record the steps.  A
    failed forward solve makes the backward pass raise :class:`~odeserve.SolveFailedError`.
    Not twice differentiable.
    """

    name = "checkpoint"

    def __init__(self, **options: Any) -> None:
        opts = parse_options(self.name, options, {"adjoint_params": None})
        self.adjoint_params = adjoint_params_option(opts["adjoint_params"], self.name)

    def run(self, prepared: Any, y0: Tensor) -> tuple[Tensor, Any]:
        params = method_params(self.name, prepared, y0, self.adjoint_params)
        if params is None:
            return prepared.run(y0)
        box = ResultBox()
        ys = _CheckpointFunction.apply(prepared, box, module_names(prepared.f, params), y0, *params)
        return ys, box.res


class _Start(NamedTuple):
    """An accepted step's start: the loop state less what the replay recomputes (f0, ys)."""

    t: Tensor
    y: Tensor
    dt: Tensor
    memory: Tensor
    status: Tensor
    accepted: Tensor
    rejected: Tensor
    took: Tensor  # which rows accepted the step


def _skip(due: Tensor) -> bool:
    return not bool(due.any())


def record_adaptive(P: Problem, y0: Tensor, f0: Tensor | None = None) -> tuple[Tensor, LoopResult, list[_Start]]:
    """The adaptive solve, driving :func:`adaptive_step` and recording every step that some
    row accepted (without compaction, so every record has all rows)."""
    st, init_evals = adaptive_init(P, y0, f0)
    eps = P.solver.evals_per_step
    batched, evals = init_evals, torch.full_like(st.status, init_evals)
    starts: list[_Start] = []
    dense = [0]

    def skip(due: Tensor) -> bool:
        dense[0] += bool(due.any())
        return _skip(due)

    while True:
        new = adaptive_step(P, st, skip)
        took = new.accepted - st.accepted
        if bool(took.any()):
            starts.append(_Start(st.t, st.y, st.dt, st.memory, st.status, st.accepted, st.rejected, took))
        batched += eps
        running = new.status == RUNNING
        evals = evals + eps * running.to(torch.int64) if P.per_sample else evals + eps
        st = new
        if not bool(running.any()):
            break
    extra = dense[0] * P.solver.interpolation_evals
    res = LoopResult(st.t, st.ys, st.y, st.status, st.accepted, st.rejected, batched + extra, evals + extra)
    return torch.cat([y0.unsqueeze(0), st.ys, st.y.unsqueeze(0)]), res, starts


def replay_adaptive(
    P: Problem, starts: list[_Start], params: Sequence[Tensor], g: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """Back-propagate ``g`` through the recorded steps, each recomputed by :func:`adaptive_step`
    itself (same step size, same accept decision, same dense output)."""
    grads = [torch.zeros_like(p) for p in params]
    a, g_int = g[-1], g[1:-1]
    no_outputs = g_int.new_zeros(g_int.shape)
    for s in reversed(starts):
        with torch.enable_grad():
            y = s.y.detach().requires_grad_()
            st = AdaptiveState(s.t, y, P.rhs(s.t, y), s.dt, s.memory, s.status, s.accepted, s.rejected, no_outputs)
            new = adaptive_step(P, st, _skip)
            if not torch.equal(new.accepted - s.accepted, s.took):
                raise RuntimeError(
                    "checkpoint: replaying a recorded step gave a different accept decision; f must be "
                    "deterministic (same output for the same input) for the replay to be exact"
                )
            outs, cots = [new.y], [a]
            if new.ys.requires_grad:
                outs.append(new.ys)
                cots.append(g_int)
            step_grads = torch.autograd.grad(outs, (y,) + tuple(params), cots, allow_unused=True)
        a = step_grads[0] if step_grads[0] is not None else torch.zeros_like(a)
        add_grads(grads, step_grads[1:])
    return a + g[0], grads


def record_fixed(prepared: PreparedSolve, y0: Tensor) -> tuple[Tensor, LoopResult, list[Tensor]]:
    """The fixed-step solve through the core loop with every grid point an output, so the
    solver's full loop state at each step's start is kept."""
    P, grid = prepared.problem, prepared.grid
    assert grid is not None
    every = FixedGrid(grid.times, list(range(grid.steps - 1)) + [-1])
    s0 = P.solver.augment(P.rhs, P.t0, y0)
    inner, s_end = fixed_eager(P, every, s0)
    states = [s0, *inner.unbind(0), s_end]
    points = output_grid_points(grid)
    width = y0.shape[-1]
    outs = P.solver.project(torch.stack([states[n] for n in points]), width)
    return outs, fixed_result(prepared, P, outs[1:-1], outs[-1]), states


class _CheckpointFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, prepared: PreparedSolve, box: ResultBox, names: list[str] | None, y0: Tensor, *params: Tensor
    ) -> Tensor:
        if prepared.adaptive:
            f0 = prepared.f0_flat if y0 is prepared.y0_flat else None
            ys, res, records = record_adaptive(prepared.problem, y0, f0)
        else:
            ys, res, records = record_fixed(prepared, y0)
        box.res = res
        ctx.prepared, ctx.names, ctx.params, ctx.records, ctx.status = prepared, names, params, records, res.status
        ctx.save_for_backward(y0)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        refuse_failed(ctx.status, Checkpointed.name)
        (y0,) = ctx.saved_tensors
        prepared, records = pinned(ctx.prepared, ctx.names, ctx.params), ctx.records
        if prepared.adaptive:
            grad_y0, grads = replay_adaptive(prepared.problem, records, ctx.params, g)
        else:
            grad_y0, grads = replay_fixed(prepared, ctx.params, y0, g, records[-1], lambda n, _: records[n])
        return (None, None, None, grad_y0, *grads)
