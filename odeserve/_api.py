"""``solve()``: validate, resolve plugins once, run the loop through a sensitivity method."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ._loop import (
    FixedGrid,
    LoopResult,
    Problem,
    adaptive_eager,
    adaptive_unrolled,
    adaptive_while,
    fixed_eager,
    fixed_while,
)
from ._state import StateSpec
from .errors import (
    InvalidOptionError,
    InvalidTimesError,
    InvalidToleranceError,
    SolveFailedError,
)
from .registry import get_registry
from .solution import Solution, Status
from .solver import Solver

__all__ = ["solve", "PreparedSolve", "prepare"]

BATCH_MODES = ("joint", "per_sample")
LOOPS = ("python", "while")


@dataclass
class PreparedSolve:
    """A solve with inputs checked and plugins resolved: what a sensitivity method runs.

    ``run(y0_flat)`` executes the loop on the flat ``(rows, D)`` initial state and returns
    the flat outputs ``(T, rows, D)`` (``y0`` first) with the loop's statistics.
    """

    f: Callable[..., Any]
    spec: StateSpec
    problem: Problem
    t: Tensor
    grid: FixedGrid | None
    loop: str
    compact: bool
    solver_name: str
    options: dict[str, Any]
    y0_flat: Tensor | None = None
    f0_flat: Tensor | None = None  # f(t0, y0) from validation, reused by run(y0_flat)
    # Adaptive ``loop="while"`` only: this many masked attempts as straight-line code instead
    # of the loop (AOTInductor's prefix model); rows not done by then stay RUNNING.
    unrolled_attempts: int | None = None
    # The problem whose f was seen, in grad mode, to give an output that does not require
    # grad from a y0 that does not (prepare's f(t0, y0)): nothing f reads requires grad, so
    # its while loop need not mark y0 as requiring grad.  Another problem (a sensitivity's
    # rhs over substituted parameters) is not covered.
    grad_free: Problem | None = None

    @property
    def adaptive(self) -> bool:
        return self.grid is None

    def run(self, y0: Tensor, problem: Problem | None = None) -> tuple[Tensor, LoopResult]:
        P = problem or self.problem
        if self.loop == "while" and torch.is_grad_enabled() and not y0.requires_grad and P is not self.grad_free:
            # torch.while_loop (2.13) only differentiates carries whose start value requires
            # grad: without this, gradients reaching f's parameters through the loop are wrong.
            # Not for an f that reads nothing requiring grad (a frozen model): its outputs
            # would require grad and keep the loop's graph for nothing.
            y0 = y0.detach().requires_grad_(True)
        if self.grid is not None:
            loop_fn = fixed_while if self.loop == "while" else fixed_eager
            width = y0.shape[-1]
            ys_int, y1 = loop_fn(P, self.grid, P.solver.augment(P.rhs, P.t0, y0))
            ys_int, y1 = P.solver.project(ys_int, width), P.solver.project(y1, width)
            status = _finite_status(P, torch.cat([ys_int, y1.unsqueeze(0)]))
            steps = torch.full_like(status, self.grid.steps)
            res = LoopResult(P.t1.expand_as(status), ys_int, y1, status, steps, torch.zeros_like(steps),
                             self.grid.steps * P.solver.evals_per_step, steps * P.solver.evals_per_step)
        elif self.loop == "while":
            res = adaptive_while(P, y0) if self.unrolled_attempts is None else \
                adaptive_unrolled(P, y0, self.unrolled_attempts)
        else:
            f0 = self.f0_flat if (y0 is self.y0_flat and problem is None) else None
            res = adaptive_eager(P, y0, compact=self.compact, f0=f0)
        ys = torch.cat([y0.unsqueeze(0), res.ys, res.y1.unsqueeze(0)])
        return ys, res


def _finite_status(P: Problem, ys: Tensor) -> Tensor:
    """Fixed-step solves check finiteness once at the end (NaN and Inf persist)."""
    bad = ~torch.isfinite(ys)
    if P.per_sample:
        bad = bad.any(dim=0).any(dim=1, keepdim=True)
    else:
        bad = bad.any()
    return torch.where(bad, int(Status.NONFINITE), 0).to(torch.int64)


def _times(t: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    t = torch.as_tensor(t.detach() if isinstance(t, Tensor) else t, dtype=dtype, device=device)
    if t.ndim != 1 or t.shape[0] < 2:
        raise InvalidTimesError(
            f"t must be a 1-D sequence of at least 2 times (start, ..., end); got shape {tuple(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()):
        raise InvalidTimesError("t contains NaN or Inf")
    d = torch.diff(t)
    if bool((d == 0).any()):
        i = int(torch.nonzero(d == 0)[0])
        raise InvalidTimesError(f"t has a repeated time {float(t[i])} at positions {i} and {i + 1}: times must be distinct")
    if not (bool((d > 0).all()) or bool((d < 0).all())):
        raise InvalidTimesError(
            "t must be strictly increasing or strictly decreasing (backward solves); "
            f"it changes direction: {t.tolist()[:8]}{'...' if t.shape[0] > 8 else ''}"
        )
    return t


def _fixed_grid(t: Tensor, dt: float | None, steps: int | None, max_steps: int) -> FixedGrid:
    ts = t.double().tolist()
    span = abs(ts[-1] - ts[0])
    h = span / steps if steps is not None else dt
    pieces: list[float] = []
    slot: list[int] = []
    n_int = len(ts) - 2
    for i in range(len(ts) - 1):
        a, b = ts[i], ts[i + 1]
        n = 1 if h is None else max(1, math.ceil(abs(b - a) / h - 1e-9))
        pieces.extend(a + (b - a) * k / n for k in range(n))
        slot.extend([-1] * (n - 1) + [i if i < n_int else -1])
        if len(slot) > max_steps:
            raise InvalidOptionError(
                f"the fixed-step grid needs more than max_steps={max_steps} steps "
                f"(dt={h}); raise max_steps or use a larger dt / fewer steps"
            )
    pieces.append(ts[-1])
    grid_t = torch.tensor(pieces, dtype=torch.float64).to(dtype=t.dtype, device=t.device)
    grid_t[0], grid_t[-1] = t[0], t[-1]
    return FixedGrid(grid_t, slot)


def _positive(name: str, value: Any, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise (InvalidToleranceError if name in ("rtol", "atol") else InvalidOptionError)(
            f"{name} must be {'non-negative' if allow_zero else 'positive'} and finite, got {value!r}"
        )
    return v


def make_rhs(f: Callable[..., Any], spec: StateSpec) -> Callable[[Tensor, Tensor], Tensor]:
    """``f(t, y)`` in the user's shapes → ``rhs(t, y_flat)`` on the loop's ``(rows, D)``."""
    if not spec.is_tuple and not spec.per_sample:
        shape, width = spec.shapes[0], spec.width

        def rhs(t: Tensor, y: Tensor) -> Tensor:
            return f(t, y.reshape(shape)).reshape(1, width)

    elif spec.per_sample:

        def rhs(t: Tensor, y: Tensor) -> Tensor:
            rows = y.shape[0]
            tt = t.reshape(-1).expand(rows) if t.numel() != rows else t.reshape(rows)
            return spec.flatten(f(tt, spec.unflatten(y)), rows)

    else:

        def rhs(t: Tensor, y: Tensor) -> Tensor:
            return spec.flatten(f(t, spec.unflatten(y)), 1)

    return rhs


def prepare(
    f: Callable[..., Any],
    y0: Tensor | Sequence[Tensor],
    t: Any,
    *,
    solver: str | type[Solver] = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    dt: float | None = None,
    steps: int | None = None,
    dt0: float | None = None,
    controller: str = "pi",
    controller_options: dict[str, Any] | None = None,
    batch: str = "joint",
    max_steps: int = 10_000,
    dt_min: float = 0.0,
    dt_max: float | None = None,
    loop: str = "python",
    compact: bool = True,
    check_f: bool = True,
) -> PreparedSolve:
    """Check every input and resolve every plugin; see :func:`solve` for the arguments."""
    if batch not in BATCH_MODES:
        raise InvalidOptionError(f"batch must be one of {BATCH_MODES}, got {batch!r}")
    if loop not in LOOPS:
        raise InvalidOptionError(f"loop must be one of {LOOPS}, got {loop!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise InvalidOptionError(f"max_steps must be a positive integer, got {max_steps!r}")
    registry = get_registry()
    solver_cls = registry.solver(solver) if isinstance(solver, str) else solver
    solver_name = solver if isinstance(solver, str) else getattr(solver, "__name__", str(solver))
    spec = StateSpec(y0, per_sample=batch == "per_sample")
    dtype, device = spec.dtype, spec.device
    times = _times(t, dtype, device)
    rtol_v, atol_v = _positive("rtol", rtol, True), _positive("atol", atol, True)
    if rtol_v == 0 and atol_v == 0:
        raise InvalidToleranceError("rtol and atol are both 0: at least one must be positive")
    if dt is not None and steps is not None:
        raise InvalidOptionError("give dt or steps, not both")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise InvalidOptionError(f"steps must be a positive integer, got {steps!r}")
    if dt is not None:
        _positive("dt", dt)
    fy = None
    if check_f:
        fy = f(times[0] if not spec.per_sample else times[0].expand(spec.batch), y0)
        spec.check_derivative(fy, "f(t0, y0)")

    s = _instance(solver_cls, dtype, device)
    direction = 1.0 if float(times[-1]) > float(times[0]) else -1.0
    P = Problem(
        rhs=make_rhs(f, spec),
        solver=s,
        per_sample=spec.per_sample,
        t0=times[0].clone(),
        t1=times[-1].clone(),
        t_interior=times[1:-1].clone(),
        direction=direction,
        max_steps=max_steps,
    )
    grid = None
    ctrl_cls = registry.controller(controller)  # an unknown name is an error even for fixed steps
    if s.adaptive:
        if dt is not None or steps is not None:
            raise InvalidOptionError(
                f"solver {solver_name!r} is adaptive: it takes rtol/atol (and optionally dt0, the first step), "
                "not dt or steps; pick a fixed-step solver (e.g. 'rk4') for a fixed grid"
            )
        P.controller = _instance(
            ctrl_cls, error_exponent=min(s.order, s.error_order or s.order) + 1, dtype=dtype, device=device,
            **(controller_options or {}),
        )
        c = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
        P = P.with_tolerances(rtol_v, atol_v)
        P.dt0 = None if dt0 is None else c(_positive("dt0", dt0))
        P.dt_min = c(_positive("dt_min", dt_min, True)) if dt_min else None
        P.dt_max = None if dt_max is None else c(_positive("dt_max", dt_max))
    else:
        grid = _fixed_grid(times, dt, steps, max_steps)
    prepared = PreparedSolve(f, spec, P, times, grid, loop, compact, solver_name, {})
    if fy is not None:
        prepared.y0_flat, prepared.f0_flat = spec.flatten(y0), spec.flatten(fy)
        if torch.is_grad_enabled() and not prepared.y0_flat.requires_grad and not prepared.f0_flat.requires_grad:
            prepared.grad_free = prepared.problem
    return prepared


_INSTANCES: dict[tuple[Any, ...], Any] = {}


def _instance(cls: type, *args: Any, **kwargs: Any) -> Any:
    """Solvers and controllers are immutable once built (their constants are tensors made in
    ``__init__``), so one instance per class, dtype, device and options is reused."""
    try:
        key = (cls, args, tuple(sorted(kwargs.items())))
        hash(key)
    except TypeError:
        return cls(*args, **kwargs)
    inst = _INSTANCES.get(key)
    if inst is None:
        if len(_INSTANCES) > 256:
            _INSTANCES.clear()
        inst = _INSTANCES[key] = cls(*args, **kwargs)
    return inst


def solve(
    f: Callable[..., Any],
    y0: Tensor | Sequence[Tensor],
    t: Any,
    *,
    solver: str | type[Solver] = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    dt: float | None = None,
    steps: int | None = None,
    dt0: float | None = None,
    controller: str = "pi",
    controller_options: dict[str, Any] | None = None,
    batch: str = "joint",
    max_steps: int = 10_000,
    dt_min: float = 0.0,
    dt_max: float | None = None,
    sensitivity: str = "autograd",
    sensitivity_options: dict[str, Any] | None = None,
    throw: bool = True,
    loop: str = "python",
    compact: bool = True,
) -> Solution:
    """Solve ``dy/dt = f(t, y)`` from ``y0`` at ``t[0]`` and return the values at every ``t``.

    f: callable or ``nn.Module`` taking ``(t, y)``; ``y`` is shaped like ``y0`` (a tuple
        when ``y0`` is a tuple).  ``t`` is a 0-d tensor in ``joint`` mode and a ``(batch,)``
        tensor in ``per_sample`` mode (each sample has its own time).
    y0: tensor or tuple/list of tensors, batch on axis 0 for ``per_sample`` mode.
    t: 1-D increasing or decreasing times; ``t[0]`` is the start, outputs at all of them.
    solver: a registered name (``odeserve plugins`` lists them) or a Solver class.
    rtol, atol: adaptive solvers' tolerances (scaled RMS error norm ≤ 1 accepts a step).
    dt, steps: fixed-step solvers: largest step, or number of steps over ``[t[0], t[-1]]``;
        the grid always lands on every output time.  Default: one step per interval of t.
    dt0: first step of an adaptive solve (default: Hairer's automatic choice).
    controller, controller_options: ``"pi"`` (default) or ``"i"``; safety, factor_min, ...
    batch: ``"joint"`` (one step size for the whole batch) or ``"per_sample"`` (each sample
        its own time, step and accept/reject).
    max_steps, dt_min, dt_max: bounds; hitting one ends that sample with a failure status.
    sensitivity: gradient method: ``"autograd"`` (default) or another registered one.
    throw: raise :class:`SolveFailedError` (partial solution attached) if any sample failed.
    loop: ``"python"`` (eager driver) or ``"while"`` (``torch.while_loop``, what
        ``torch.compile`` and export use).
    compact: per-sample mode drops finished samples from the batch f sees.
    """
    prepared = prepare(
        f, y0, t, solver=solver, rtol=rtol, atol=atol, dt=dt, steps=steps, dt0=dt0,
        controller=controller, controller_options=controller_options, batch=batch,
        max_steps=max_steps, dt_min=dt_min, dt_max=dt_max, loop=loop, compact=compact,
    )
    sens_cls = get_registry().sensitivity(sensitivity)
    method = sens_cls(**(sensitivity_options or {}))
    y0_flat = prepared.y0_flat if prepared.y0_flat is not None else prepared.spec.flatten(y0)
    ys, res = method.run(prepared, y0_flat)
    sol = build_solution(prepared, ys, res)
    if throw and not sol.success:
        raise SolveFailedError(f"solve with {sol.solver!r} failed: {sol.describe_failure()}", sol)
    return sol


def build_solution(prepared: PreparedSolve, ys: Tensor, res: LoopResult) -> Solution:
    P = prepared.problem
    status = res.status
    if not bool((status == 0).all()):
        # The partial solution: outputs past where a sample stopped are NaN.
        t_out = prepared.t.reshape(-1, 1, 1)
        beyond = (t_out - res.t) * P.direction > 0
        ys = torch.where(beyond, torch.full_like(ys, float("nan")), ys)
    flat_status = status.reshape(-1) if P.per_sample else status.reshape(())
    steps = res.accepted + res.rejected
    stats: dict[str, Any] = {
        "nfe": int(res.batched_calls),
        "steps": _shape(steps, P),
        "accepted": _shape(res.accepted, P),
        "rejected": _shape(res.rejected, P),
        "evals": _shape(res.evals, P),
        "t_final": _shape(res.t, P),
    }
    if P.per_sample and prepared.adaptive:
        total = float(res.evals.sum())
        useful = float((res.accepted * P.solver.evals_per_step).sum())
        stats["useful_evals"] = useful / total if total else 1.0
    return Solution(
        ts=prepared.t,
        ys=prepared.spec.unflatten(ys),
        status=flat_status,
        stats=stats,
        solver=prepared.solver_name,
        batch="per_sample" if P.per_sample else "joint",
    )


def _shape(x: Tensor, P: Problem) -> Tensor:
    return x.reshape(-1) if P.per_sample else x.reshape(())
