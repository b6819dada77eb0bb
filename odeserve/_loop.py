"""The step loop.

``adaptive_step`` is a pure function from loop state to loop state over tensors: no Python
branch on tensor values (except the optional ``eager_skip`` hook the Python driver passes),
per-sample decisions as ``torch.where`` masks, constants made once in :class:`Problem`.  The
eager driver calls it from a Python loop (one host read per step to stop, and per-sample
compaction of finished rows); :func:`adaptive_while` hands the very same function to
``torch.while_loop`` for ``torch.compile`` and export.  Fixed-step solves share the
solver's ``step`` the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

from .solution import Status
from .solver import RHS, Const, Solver, StepSizeController

__all__ = ["Problem", "AdaptiveState", "FixedGrid", "LoopResult"]

RUNNING = int(Status.RUNNING)


@dataclass
class Problem:
    """A solve with every plugin resolved to a concrete object and every constant a tensor."""

    rhs: RHS
    solver: Solver
    per_sample: bool
    t0: Tensor  # 0-d
    t1: Tensor  # 0-d
    t_interior: Tensor  # (T_int,) output times strictly between t0 and t1
    direction: float
    controller: StepSizeController | None = None
    rtol: Tensor | None = None
    atol: Tensor | None = None
    dt0: Tensor | None = None
    dt_min: Tensor | None = None
    dt_max: Tensor | None = None
    max_steps: int = 10_000
    one: Tensor | None = None  # 1 in the state's dtype
    zero_atol: bool = False  # pure relative error control (guards 0/0 in the error norm)
    #: the :class:`~odeserve.solver.Const` each of ``one``, ``rtol``, ``atol`` was made as: see :meth:`k`
    consts: dict[str, Const] = field(default_factory=dict)

    def with_tolerances(self, rtol: float, atol: float) -> Problem:
        """A copy with ``rtol``, ``atol`` and ``one`` as tensors of the time's dtype (the
        state's), each made through :class:`~odeserve.solver.Const` (see :meth:`k`), and
        ``zero_atol`` set from ``atol``."""
        like = self.t0
        consts = {n: Const(v, like.dtype, like.device) for n, v in (("rtol", rtol), ("atol", atol), ("one", 1.0))}
        return dataclasses.replace(self, consts=consts, zero_atol=atol == 0, **{n: c.tensor for n, c in consts.items()})

    def k(self, name: str) -> Tensor:
        """The constant field ``name`` (``one``, ``rtol``, ``atol``) as :class:`~odeserve.solver.Const`
        gives it: a literal op while torch.compile/export trace, the tensor otherwise.  A field
        replaced since (``dataclasses.replace``) is returned as it is."""
        value = getattr(self, name)
        c = self.consts.get(name)
        return c() if c is not None and c.tensor is value else value

    def mean(self, x: Tensor) -> Tensor:
        """Mean over one error-norm group: a sample (keeps ``(rows, 1)``) or the whole batch."""
        return x.mean(dim=1, keepdim=True) if self.per_sample else x.mean()

    def scalar_like(self, value: Tensor, rows: int) -> Tensor:
        """A per-sample quantity: ``(rows, 1)`` per sample, 0-d for the joint batch."""
        # contiguous_format, not preserve: at rows == 1 an expanded tensor keeps strides
        # (0, 0), which the loop body does not reproduce (torch.export's while_loop check).
        return value.expand(rows, 1).clone(memory_format=torch.contiguous_format) if self.per_sample else value.clone()


class AdaptiveState(NamedTuple):
    t: Tensor
    y: Tensor
    f0: Tensor
    dt: Tensor
    memory: Tensor
    status: Tensor
    accepted: Tensor
    rejected: Tensor
    ys: Tensor  # (T_int, rows, D)


class LoopResult(NamedTuple):
    t: Tensor  # per-sample time reached
    ys: Tensor  # (T_int, rows, D)
    y1: Tensor  # (rows, D)
    status: Tensor  # per-sample shape
    accepted: Tensor
    rejected: Tensor
    batched_calls: int | Tensor
    evals: Tensor  # per-sample f evaluations (after the initial ones)
    dt: Tensor | None = None  # adaptive: the step size the controller proposed last


# --------------------------------------------------------------------------- adaptive


def initial_step(P: Problem, y0: Tensor, f0: Tensor) -> Tensor:
    """Hairer, Nørsett & Wanner, Solving ODEs I, §II.4 (algorithm for the starting step),
    per error-norm group; costs one f evaluation.  The choice is not differentiated."""
    assert P.rtol is not None and P.atol is not None
    k = _consts(P, y0)
    with torch.no_grad():
        y0, f0 = y0.detach(), f0.detach()
        scale = torch.addcmul(P.atol, P.rtol, y0.abs())
        if P.zero_atol:
            scale = torch.where(scale == 0, k["1"], scale)
        d0 = torch.sqrt(P.mean(torch.square(y0 / scale)))
        d1 = torch.sqrt(P.mean(torch.square(f0 / scale)))
        small = (d0 < k["1e-5"]) | (d1 < k["1e-5"])
        h0 = torch.where(small, k["1e-6"], k["0.01"] * d0 / torch.where(small, k["1"], d1))
        span = (P.t1 - P.t0).abs()
        h0 = torch.minimum(h0, span)
        t0 = P.scalar_like(P.t0, y0.shape[0])
        signed = h0 if P.direction > 0 else -h0
        f1 = P.rhs(t0 + signed, torch.addcmul(y0, signed, f0))
        d2 = torch.sqrt(P.mean(torch.square((f1 - f0) / scale))) / h0
        dmax = torch.maximum(d1, d2)
        tiny = dmax <= k["1e-15"]
        h1 = torch.where(
            tiny,
            torch.maximum(h0 * k["1e-3"], k["1e-6"]),
            torch.pow(k["0.01"] / torch.where(tiny, k["1"], dmax), k["exponent"]),
        )
        h = torch.minimum(torch.minimum(k["100"] * h0, h1), span)
        if P.dt_max is not None:
            h = torch.minimum(h, P.dt_max)
        return h if P.direction > 0 else -h


def _consts(P: Problem, like: Tensor) -> dict[str, Tensor]:
    """Initial-step constants as tensors of the state's dtype (a float64 ONNX graph would
    otherwise hold Python numbers rounded to float32)."""
    key = (like.dtype, like.device, P.solver.order)
    consts = _CONSTS.get(key)
    if consts is None:
        values = {"1": 1.0, "100": 100.0, "0.01": 0.01, "1e-3": 1e-3, "1e-5": 1e-5, "1e-6": 1e-6, "1e-15": 1e-15,
                  "exponent": 1.0 / (P.solver.order + 1)}
        consts = {k: torch.tensor(v, dtype=like.dtype, device=like.device) for k, v in values.items()}
        # Made while torch.export traces, these are fake tensors: caching them would poison
        # every later eager solve, so only real tensors are kept.
        if type(consts["1"]) is Tensor:
            _CONSTS[key] = consts
    return consts


_CONSTS: dict[tuple[Any, ...], dict[str, Tensor]] = {}


def adaptive_init(P: Problem, y0: Tensor, f0: Tensor | None = None) -> tuple[AdaptiveState, int]:
    """Start state and the number of f evaluations it cost (``f0 = f(t0, y0)`` may be given)."""
    assert P.controller is not None
    rows = y0.shape[0]
    t = P.scalar_like(P.t0, rows)
    evals = 0
    if f0 is None:
        f0 = P.rhs(t, y0)
        evals += 1
    if P.dt0 is None:
        dt = initial_step(P, y0, f0)
        evals += 1
    else:
        h = P.dt0.abs() if P.dt_max is None else torch.minimum(P.dt0.abs(), P.dt_max)
        dt = P.scalar_like(h if P.direction > 0 else -h, rows)
    status = torch.full_like(t, RUNNING, dtype=torch.int64)
    zeros = torch.zeros_like(status)
    ys = y0.new_zeros((P.t_interior.shape[0],) + tuple(y0.shape))
    return AdaptiveState(t, y0, f0, dt, P.controller.init_memory(t), status, zeros, zeros.clone(), ys), evals


def adaptive_step(
    P: Problem, st: AdaptiveState, eager_skip: Callable[[Tensor], bool] | None = None, masked: bool = True
) -> AdaptiveState:
    """One attempted step for every row.

    ``masked=True`` (compiled/exported loops) freezes rows that already stopped with
    ``torch.where``; the eager driver passes ``masked=False`` because its working set only
    ever holds running rows (joint mode stops at once; per-sample mode compacts).
    """
    assert P.controller is not None and P.rtol is not None and P.atol is not None
    solver = P.solver
    fwd = P.direction > 0
    remaining = P.t1 - st.t
    last = st.dt >= remaining if fwd else st.dt <= remaining
    dt = torch.where(last, remaining, st.dt)

    res = solver.step(P.rhs, st.t, st.y, dt, st.f0)
    assert res.f is not None
    one = P.k("one")
    scale = torch.addcmul(P.k("atol"), P.k("rtol"), torch.maximum(st.y.abs(), res.y.abs()))
    if P.zero_atol:
        # Pure relative control: a component that is exactly 0 has nothing to measure.
        scale = torch.where(scale == 0, one, scale)
    ratio = solver.error_ratio(res.err, scale, P.mean).detach()
    ok = ratio <= one  # False for NaN
    if masked:
        running = st.status == RUNNING
        accept, reject = running & ok, running & ~ok
    else:
        accept, reject = ok, ~ok
    t_new = torch.where(last, P.t1, st.t + dt)

    ys = st.ys
    if P.t_interior.shape[0] > 0:
        t_out = P.t_interior.reshape((-1,) + (1,) * st.y.ndim)
        ahead, reached = (t_out > st.t, t_out <= t_new) if fwd else (t_out < st.t, t_out >= t_new)
        due = accept & ahead & reached
        if eager_skip is None or not eager_skip(due):
            theta = (t_out - st.t) / torch.where(dt == 0, one, dt)
            vals = solver.interpolate(P.rhs, st.t, dt, st.y, st.f0, res, theta)
            ys = torch.where(due, vals, ys)

    y = torch.where(accept, res.y, st.y)
    f0 = torch.where(accept, res.f, st.f0)
    t = torch.where(accept, t_new, st.t)
    factor, memory = P.controller.adapt(dt, ratio, st.memory, accept)
    dt_next = dt * factor
    if P.dt_max is not None:
        dt_next = torch.clamp(dt_next, -P.dt_max, P.dt_max)
    accepted = st.accepted + accept
    rejected = st.rejected + reject

    # Status: SUCCESS once the last step is accepted, else a failure code or still RUNNING.
    small = (t + dt_next == t) | ~torch.isfinite(dt_next)
    if P.dt_min is not None:
        small = small | (dt_next.abs() < P.dt_min)
    failure = torch.where(
        small,
        torch.where(torch.isfinite(ratio), int(Status.DT_UNDERFLOW), int(Status.NONFINITE)),
        torch.where(accepted + rejected >= P.max_steps, int(Status.MAX_STEPS), RUNNING),
    )
    status = torch.where(accept & last, 0, failure)
    if masked:
        status = torch.where(running, status, st.status)
        dt_next = torch.where(running, dt_next, st.dt)
        memory = torch.where(running, memory, st.memory)
    return AdaptiveState(t, y, f0, dt_next, memory, status, accepted, rejected, ys)


def _rows(st: AdaptiveState, idx: Tensor) -> AdaptiveState:
    return AdaptiveState(
        st.t[idx], st.y[idx], st.f0[idx], st.dt[idx], st.memory[idx], st.status[idx],
        st.accepted[idx], st.rejected[idx], st.ys[:, idx],
    )


def adaptive_eager(P: Problem, y0: Tensor, compact: bool = True, f0: Tensor | None = None) -> LoopResult:
    """Drive :func:`adaptive_step` from Python.  Per-sample mode drops finished rows from the
    working set, so f is only evaluated on samples that are still running."""
    st, init_evals = adaptive_init(P, y0, f0)
    eps = P.solver.evals_per_step
    per_row_compact = P.per_sample and compact
    if per_row_compact:
        final = st
        index = torch.arange(y0.shape[0], device=y0.device)
    batched = init_evals
    evals = torch.full_like(st.status, init_evals)

    dense_calls = [0]

    def skip(due: Tensor) -> bool:
        if bool(due.any()):
            dense_calls[0] += 1
            return False
        return True

    while True:
        was_running = st.status == RUNNING
        st = adaptive_step(P, st, skip, masked=P.per_sample and not compact)
        batched += eps
        running = st.status == RUNNING
        if per_row_compact:
            evals = evals.index_add(0, index, torch.full_like(st.status, eps))
            n_run = int(running.sum())
            if n_run < st.status.shape[0]:
                done = torch.nonzero(~running[:, 0]).reshape(-1)
                final = _scatter(final, index[done], _rows(st, done))
                if n_run == 0:
                    break
                keep = torch.nonzero(running[:, 0]).reshape(-1)
                st, index = _rows(st, keep), index[keep]
        else:
            evals = evals + eps * was_running.to(torch.int64) if P.per_sample else evals + eps
            if not bool(running.any()):
                break
    if per_row_compact:
        st = final
    extra = dense_calls[0] * P.solver.interpolation_evals
    return LoopResult(st.t, st.ys, st.y, st.status, st.accepted, st.rejected, batched + extra, evals + extra,
                      st.dt)


def _scatter(dst: AdaptiveState, idx: Tensor, src: AdaptiveState) -> AdaptiveState:
    return AdaptiveState(
        dst.t.index_copy(0, idx, src.t), dst.y.index_copy(0, idx, src.y), dst.f0.index_copy(0, idx, src.f0),
        dst.dt.index_copy(0, idx, src.dt), dst.memory.index_copy(0, idx, src.memory),
        dst.status.index_copy(0, idx, src.status), dst.accepted.index_copy(0, idx, src.accepted),
        dst.rejected.index_copy(0, idx, src.rejected), dst.ys.index_copy(1, idx, src.ys),
    )


def _output_buffer(y0: Tensor, n: int) -> Tensor:
    """``n`` output slots for a ``torch.while_loop`` carry, filled with copies of ``y0``, not
    zeros: torch.while_loop (2.13) back-propagates only through carries whose initial value
    requires grad, so a zero buffer silently drops the gradient of every output it collects.
    Every slot is overwritten before it is read, so the values are the same."""
    return y0.unsqueeze(0).expand((n,) + tuple(y0.shape)).clone()


def adaptive_while(P: Problem, y0: Tensor) -> LoopResult:
    """The same step as a ``torch.while_loop``: compiles whole and exports to an ONNX Loop."""
    st, init_evals = adaptive_init(P, y0)
    outputs = P.t_interior.shape[0] > 0
    st = st._replace(ys=_output_buffer(y0, P.t_interior.shape[0]))
    iters = torch.zeros((), dtype=torch.int64, device=y0.device)

    def state(carry: tuple[Tensor, ...]) -> AdaptiveState:
        # Without interior output times (a static fact) the empty ``ys`` is not carried: a
        # carry costs every iteration (a fresh buffer, two tensor handles in a compiled
        # loop; a Loop variable and a copy in ONNX) even when it holds nothing.
        return AdaptiveState(*carry) if outputs else AdaptiveState(*carry, ys=carry[1].new_zeros((0,) + carry[1].shape))

    def carried(s: AdaptiveState) -> tuple[Tensor, ...]:
        return tuple(s) if outputs else tuple(s)[:-1]

    def cond(i: Tensor, *carry: Tensor) -> Tensor:
        return (carry[5] == RUNNING).any()

    def body(i: Tensor, *carry: Tensor) -> tuple[Tensor, ...]:
        nxt = carried(adaptive_step(P, state(carry)))
        # torch.export rejects a body that returns an input unchanged (aliasing).
        return (i + 1,) + tuple(n.clone() if n is c else n for n, c in zip(nxt, carry))

    out = torch.while_loop(cond, body, (iters,) + carried(st))
    return _adaptive_result(P, state(out[1:]), init_evals, out[0])


def adaptive_unrolled(P: Problem, y0: Tensor, attempts: int) -> LoopResult:
    """The start and ``attempts`` masked steps as straight-line code, no loop: what an
    AOTInductor package's ``prefix`` model runs (its buffers can then live on the stack).
    Rows that need more attempts come back ``RUNNING``; the caller finishes them with the
    loop (:func:`adaptive_while`), so this never returns a wrong answer for them."""
    st, init_evals = adaptive_init(P, y0)
    for _ in range(attempts):
        st = adaptive_step(P, st)
    return _adaptive_result(P, st, init_evals, attempts)


def _adaptive_result(P: Problem, st: AdaptiveState, init_evals: int, attempted: int | Tensor) -> LoopResult:
    """A compiled/exported adaptive solve's result after ``attempted`` masked attempts (every
    row evaluated f each time; per row only its own accepted and rejected steps count)."""
    eps = P.solver.evals_per_step + (P.solver.interpolation_evals if P.t_interior.shape[0] > 0 else 0)
    return LoopResult(st.t, st.ys, st.y, st.status, st.accepted, st.rejected, init_evals + eps * attempted,
                      init_evals + eps * (st.accepted + st.rejected), st.dt)


# --------------------------------------------------------------------------- fixed step


@dataclass
class FixedGrid:
    """Step boundaries and, for each step, the output slot its end fills (-1: none)."""

    times: Tensor  # (N + 1,)
    slot: list[int]  # len N

    @property
    def steps(self) -> int:
        return len(self.slot)


_TIME_CHUNK = 256


def fixed_eager(P: Problem, grid: FixedGrid, y0: Tensor) -> tuple[Tensor, Tensor]:
    """Python-driven fixed steps (also what the unrolled ONNX graph traces).
    Returns the interior outputs ``(T_int, rows, D)`` and the final state."""
    y = y0
    outs: list[Tensor] = []
    # The step times as 0-d views, made a chunk at a time (one unbind is cheaper than an
    # index per step; chunks keep the ~1 KB per view from growing with the step count).
    for start in range(0, grid.steps, _TIME_CHUNK):
        seg = grid.times[start : start + _TIME_CHUNK + 1]
        for i, (t, dt) in enumerate(zip(seg.unbind(0), torch.diff(seg).unbind(0)), start):
            y = P.solver.step(P.rhs, t, y, dt, None).y
            if grid.slot[i] >= 0:
                outs.append(y)
    ys = torch.stack(outs) if outs else y0.new_zeros((0,) + tuple(y0.shape))
    return ys, y


def fixed_unrolled(P: Problem, grid: FixedGrid, y: Tensor, start: Tensor, count: int) -> Tensor:
    """``count`` steps of the grid from step ``start`` (a 0-d int64 tensor) as straight-line
    code, no loop: what an AOTInductor package's ``chunk`` model runs, ``ceil(N / count)``
    times.  When ``count`` does not divide the step count, steps past the grid's end leave
    ``y`` as it is."""
    dts = torch.diff(grid.times)
    exact = grid.steps % count == 0
    for r in range(count):
        at = (start + r).reshape(1)
        nxt = _grid_step(P, grid.times, dts, at if exact else torch.clamp(at, max=grid.steps - 1), y)
        y = nxt if exact else torch.where(at < grid.steps, nxt, y)
    return y


def _grid_step(P: Problem, times: Tensor, dts: Tensor, at: Tensor, y: Tensor) -> Tensor:
    """One step of the grid at the step index ``at`` (a 1-element int64 tensor).
    index_select, not times[i]: a data-dependent index must stay a tensor op to trace."""
    return P.solver.step(P.rhs, times.index_select(0, at).reshape(()), y, dts.index_select(0, at).reshape(()), None).y


def fixed_while(P: Problem, grid: FixedGrid, y0: Tensor) -> tuple[Tensor, Tensor]:
    """Fixed steps as a ``torch.while_loop``: graph size independent of the step count.
    Outputs land in a buffer with one scratch slot for steps that end between outputs."""
    n_int = P.t_interior.shape[0]
    times, dts = grid.times, torch.diff(grid.times)
    n = torch.tensor(grid.steps, dtype=torch.int64, device=y0.device)
    i0 = torch.zeros((), dtype=torch.int64, device=y0.device)

    def cond(i: Tensor, *carry: Tensor) -> Tensor:
        return i < n

    def step(i: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        at = i.reshape(1)
        return at, _grid_step(P, times, dts, at, y)

    if n_int == 0:
        # No interior outputs (a static fact): no buffer to carry or write, a few ops fewer
        # per step in every graph (ONNX nodes, compiled kernels' loop inputs).
        def body_final(i: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            return i + 1, step(i, y)[1]

        _, y = torch.while_loop(cond, body_final, (i0, y0))
        return y0.new_zeros((0,) + tuple(y0.shape)), y

    slot = torch.tensor([s if s >= 0 else n_int for s in grid.slot], dtype=torch.int64, device=y0.device)
    buf = _output_buffer(y0, n_int + 1)

    def body(i: Tensor, y: Tensor, buf: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        at, y = step(i, y)
        return i + 1, y, buf.index_copy(0, slot.index_select(0, at), y.unsqueeze(0))

    _, y, buf = torch.while_loop(cond, body, (i0, y0, buf))
    return buf[:n_int], y
