"""ONNX export of a whole solve, gated on parity with the eager solve.

:func:`to_onnx` writes one self-contained ``.onnx`` file (weights inside) computing
``y0 ↦ y(t1)`` (or ``y`` at every output time) for any batch size:

* ``mode="loop"`` (default): the solve's ``torch.while_loop`` becomes one ONNX ``Loop``
  (the dynamo exporter).  Fixed-step solvers loop over a precomputed grid, so graph size and
  export time do not depend on the step count; adaptive solvers loop until every sample has
  finished, with per-sample step control, a ``max_steps`` bound and a ``status`` output.
* ``mode="unrolled"``: the fixed-step Python loop traced step by step (the TorchScript-based
  exporter, fast for a few steps; the graph grows with the step count).

Plugins are resolved by :func:`odeserve._api.prepare` before tracing, so the exporter only
sees tensors and concrete modules.  Every export then runs the file in ONNX Runtime on the
example and on fresh inputs of other batch sizes and compares with the eager solve; beyond
the tolerance it raises :class:`ParityError` and no file is left behind (the file is
written under a temporary name and renamed only after the gate passes).  Python control flow
on tensor values in ``f`` is refused (:class:`DataDependentControlFlowError`), never traced
silently; an operation ONNX cannot express raises :class:`UnsupportedOpError` naming it.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from odeserve._api import BATCH_MODES, PreparedSolve, build_solution, make_rhs, prepare
from odeserve.errors import InvalidOptionError
from odeserve.registry import get_registry

from ._artifact import (
    DataDependentControlFlowError,
    ExportError,
    InvalidArtifactError,
    ParityError,
    StepsNotReachedError,
    UnsupportedOpError,
    atomic_output,
    check_writable,
    default_tolerance,
    parity_error,
    provenance,
    unprefixed,
)
from ._onnx_trace import (
    SolveGraph,
    check_no_value_branches,
    export_dynamo,
    export_legacy,
    grid_plan,
    locate_op,
    set_metadata,
    strip_metadata,
)
from ._ort import OnnxModel, TensorSpec
from ._steps import AutoSteps, calibration_inputs, choose_steps

__all__ = [
    "to_onnx",
    "OnnxExport",
    "OnnxModel",
    "TensorSpec",
    "read_metadata",
    "ExportError",
    "ParityError",
    "UnsupportedOpError",
    "DataDependentControlFlowError",
    "StepsNotReachedError",
    "InvalidArtifactError",
]

FORMAT = "odeserve-onnx/1"
MODES = ("loop", "unrolled")


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`to_onnx` wrote: the path, the metadata stored in the file, the parity error
    measured per checked input, and the export's cost (``export_seconds``: trace and
    conversion; ``metadata["total_seconds"]`` adds the steps search and the parity gate)."""

    path: Path
    metadata: dict[str, Any]
    parity: dict[str, float]
    export_seconds: float
    size_bytes: int
    steps: int | None
    auto_steps: AutoSteps | None = None

    def load(self, **options: Any) -> OnnxModel:
        return OnnxModel(self.path, **options)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The odeserve metadata of an exported file (without loading the weights' session)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise InvalidArtifactError(f"{str(path)!r} is not a readable ONNX model: {type(e).__name__}: {e}") from None
    return unprefixed({p.key: p.value for p in model.metadata_props})


# --------------------------------------------------------------------------- helpers


def _comps(y: Any) -> tuple[Tensor, ...]:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _pack(comps: Sequence[Tensor], like: Any) -> Any:
    return tuple(comps) if isinstance(like, (tuple, list)) else comps[0]


@contextlib.contextmanager
def _inference(f: Any) -> Iterator[None]:
    """eval() and no_grad for the export, restoring the caller's module modes afterwards."""
    modes = [(m, m.training) for m in f.modules()] if isinstance(f, nn.Module) else []
    for m, _ in modes:
        m.training = False
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was in modes:
            m.training = was


def _cast_module(f: Any, dtype: torch.dtype) -> Any:
    if not isinstance(f, nn.Module):
        return f
    dts = {p.dtype for p in list(f.parameters()) + list(f.buffers()) if p.is_floating_point()}
    if dts and dts != {dtype}:
        import copy

        return copy.deepcopy(f).to(dtype)
    return f


def _random_like(example: Any, batch: int, gen: torch.Generator) -> Any:
    """Fresh inputs of another batch size, spread like the example's values."""
    out = []
    for c in _comps(example):
        c64 = c.double()
        mean = float(c64.mean()) if c.numel() else 0.0
        std = float(c64.std()) if c.numel() > 1 else 0.0
        std = std if std > 0 else max(abs(mean), 1.0)
        r = torch.randn((batch,) + tuple(c.shape[1:]), generator=gen, dtype=torch.float64) * std + mean
        out.append(r.to(c.dtype))
    return _pack(out, example)


# --------------------------------------------------------------------------- to_onnx


def to_onnx(
    model_or_f: Callable[..., Any],
    example_y0: Tensor | Sequence[Tensor],
    path: str | Path,
    *,
    solver: str = "rk4",
    t0: float | None = None,
    t1: float | None = None,
    steps: int | str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    output_times: Sequence[float] | Tensor | None = None,
    mode: str = "loop",
    dynamic_batch: bool = True,
    batch: str = "per_sample",
    dynamic_times: bool = False,
    dtype: torch.dtype | None = None,
    opset: int = 20,
    max_steps: int = 10_000,
    controller: str = "pi",
    state_names: Sequence[str] | None = None,
    parity_tol: float | None = None,
    parity_batches: Sequence[int] = (1, 7, 256),
    calibration: Sequence[Any] | None = None,
    steps_cap: int = 4096,
    seed: int = 0,
) -> OnnxExport:
    """Export the solve of ``dy/dt = f(t, y)`` from a batch of ``y0`` to an ONNX file.

    model_or_f: ``f(t, y)``, an ``nn.Module`` (weights go into the file) or a function;
        ``y`` is a batch shaped like ``example_y0`` (a tuple for tuple states) and ``t`` is
        a ``(batch,)`` tensor (per-sample time), as in ``odeserve.solve(..., batch="per_sample")``.
    example_y0: a batch (axis 0) of initial states, used to trace and check parity.
    path: the ``.onnx`` file; written only after the parity gate passes.
    solver: any registered solver.  Fixed-step solvers take ``steps`` (an int, or ``"auto"``
        with ``rtol``/``atol``: the smallest count matching a tight adaptive solve on the
        example (+ ``calibration`` batches), searched up to ``steps_cap``); adaptive ones take
        ``rtol``/``atol`` (default 1e-5/1e-7 in float32, 1e-7/1e-9 in float64), ``max_steps``
        and ``controller``.
    t0, t1: the time span (default 0, 1).  output_times: times to return the state at (first
        and last are the span); default: only the final state.
    mode: ``"loop"`` (one ONNX Loop; any solver) or ``"unrolled"`` (fixed-step only, small
        step counts).
    dynamic_batch: any batch size (else the example's).  batch: ``"per_sample"`` (each
        sample its own step sizes, error norm and status; the default) or ``"joint"`` (one
        step size and error norm for the whole batch, as ``odeserve.solve``'s default and
        torchdiffeq: fewer loop iterations on a large batch of similar samples, but the
        result of a sample depends on the rest of its batch; ``f`` gets ``t`` as in the eager
        joint solve).  Fixed-step solves are the same either way.  dynamic_times: the span (inputs
        ``t0``, ``t1``) or the output grid (input ``t``, fixed length) become graph inputs;
        a fixed-step grid keeps the example's step counts per interval.
    dtype: float32 or float64 (default: the example's); a module is copied and cast if needed.
    opset: ONNX opset (18–24 for ``loop``).
    state_names: input names of the state components (outputs get ``_t1``/``_ts``);
        default ``y0`` → ``y1``/``ys`` (``y0_0``, ``y0_1``, ... for tuple states).
    parity_tol: max allowed :func:`parity_error` (default by dtype: 1e-4 float32, 1e-9 float64;
        adaptive solves additionally allow 10·rtol, since float32 accept/reject decisions
        near the threshold may differ between runtimes).
    parity_batches: batch sizes of the fresh random inputs the file is checked on (with
        ``dynamic_batch``), besides the example itself; ``seed`` seeds them.
    calibration: extra batches for ``steps="auto"``; steps_cap: the largest count it tries.

    Returns an :class:`OnnxExport`; the metadata is also in the file (``odeserve inspect``).
    """
    t_start = time.perf_counter()
    path = check_writable(path)  # before the slow part
    plan = _plan(model_or_f, example_y0, solver=solver, t0=t0, t1=t1, steps=steps, rtol=rtol, atol=atol,
                 output_times=output_times, mode=mode, dtype=dtype, opset=opset, dynamic_times=dynamic_times,
                 batch=batch)
    f, example, times = plan.f, plan.example, plan.times
    with _inference(f):
        check_no_value_branches(f, example, times[0])  # seconds, before minutes of export
        auto: AutoSteps | None = None
        if plan.steps == "auto":
            auto = choose_steps(f, calibration_inputs(example, calibration), times, solver=solver,
                                rtol=1e-6 if rtol is None else rtol, atol=0.0 if atol is None else atol, cap=steps_cap)
        options: dict[str, Any] = dict(solver=solver, max_steps=max_steps, batch=plan.batch)
        if plan.adaptive:
            options.update(rtol=plan.rtol, atol=plan.atol, controller=controller)
        else:
            options.update(steps=auto.steps if auto is not None else plan.steps)
        want_example = _eager(f, example, times, options)  # before tracing: f's own state stays eager

        prepared = export_prepare(f, example, times, "while" if mode == "loop" else "python", options)
        names = _Names.make(len(_comps(example)), state_names, plan.time_inputs, plan.final, plan.adaptive)
        t_trace = time.perf_counter()
        proto, exporter = _trace(plan, prepared, names, dynamic_batch, opset)
        trace_seconds = time.perf_counter() - t_trace

        meta = _metadata(plan, prepared, names, auto, exporter, dynamic_batch=dynamic_batch, opset=opset,
                         controller=controller, max_steps=max_steps)
        with atomic_output(path) as tmp:
            _write(proto, meta, tmp)
            tol = parity_tol if parity_tol is not None else default_tolerance(plan.dtype)
            if plan.adaptive and parity_tol is None and plan.dtype == torch.float32:
                tol = max(tol, 10 * plan.rtol)
            checks = _parity_inputs(example, dynamic_batch, parity_batches, seed, plan.time_inputs, times)
            errors = _parity(tmp, f, options, want_example, example, checks, names, plan.final, times)
            worst = max(errors.values())
            if not worst <= tol:
                detail = ", ".join(f"{k}: {v:.3g}" for k, v in errors.items())
                raise ParityError(
                    f"the ONNX file does not reproduce the eager solve: max error {worst:.3g} > tolerance {tol:.3g} "
                    f"({detail}); no file was written. If the difference is expected (e.g. borderline float32 "
                    "accept/reject decisions), raise parity_tol",
                    errors, tol,
                )
            meta.update(parity_error=worst, parity_tolerance=tol, parity_checks=errors)
            meta["export_seconds"] = round(trace_seconds, 3)  # trace + conversion
            meta["total_seconds"] = round(time.perf_counter() - t_start, 3)  # + steps search, parity gate
            meta["inputs"], meta["outputs"] = _signature(tmp)
            _write(proto, meta, tmp)
    steps_out = None if plan.adaptive else int(meta["steps"])
    return OnnxExport(path, meta, errors, meta["export_seconds"], path.stat().st_size, steps_out, auto)


@dataclass
class _Plan:
    """The validated arguments of one export."""

    f: Any
    example: Any
    dtype: torch.dtype
    times: Tensor
    times_list: list[float]
    final: bool  # only the final state (no output_times)
    time_inputs: str | None  # None, "span" (t0, t1) or "grid" (t)
    adaptive: bool
    solver: str
    mode: str
    steps: int | str | None
    rtol: float
    atol: float
    batch: str  # "per_sample" or "joint"


def _plan(model_or_f: Any, example_y0: Any, *, solver: str, t0: float | None, t1: float | None,
          steps: int | str | None, rtol: float | None, atol: float | None, output_times: Any, mode: str,
          dtype: torch.dtype | None, opset: int, dynamic_times: bool, batch: str) -> _Plan:
    if mode not in MODES:
        raise InvalidOptionError(f"mode must be one of {MODES}, got {mode!r}")
    if batch not in BATCH_MODES:
        raise InvalidOptionError(f"batch must be one of {BATCH_MODES}, got {batch!r}")
    adaptive = bool(get_registry().solver(solver).adaptive)
    if adaptive and mode == "unrolled":
        raise InvalidOptionError(
            f"solver {solver!r} is adaptive: its step count depends on the data, so it cannot be unrolled; "
            "use mode='loop' (one ONNX Loop with per-sample step control)"
        )
    if mode == "loop" and not 18 <= opset <= 24:
        raise InvalidOptionError(f"mode='loop' needs opset 18–24 (ONNX Loop as the exporter writes it), got {opset}")
    comps = _comps(example_y0)
    if not comps or not all(isinstance(c, Tensor) for c in comps):
        raise TypeError("example_y0 must be a tensor or a tuple of tensors (batch on axis 0)")
    dtype = dtype or comps[0].dtype
    if dtype not in (torch.float32, torch.float64):
        raise InvalidOptionError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if any(c.ndim == 0 for c in comps):
        raise InvalidOptionError("example_y0 needs a batch axis (axis 0) on every component")
    example = _pack([c.detach().to(dtype) for c in comps], example_y0)

    if output_times is not None:
        times_list = [float(x) for x in (output_times.tolist() if isinstance(output_times, Tensor) else output_times)]
        for name, v, i in (("t0", t0, 0), ("t1", t1, -1)):
            if v is not None and times_list and float(v) != times_list[i]:
                raise InvalidOptionError(f"{name}={v} disagrees with output_times[{i}]={times_list[i]}; give one of them")
    else:
        times_list = [0.0 if t0 is None else float(t0), 1.0 if t1 is None else float(t1)]

    if adaptive:
        if steps is not None:
            raise InvalidOptionError(f"solver {solver!r} is adaptive: give rtol/atol, not steps")
        default_r, default_a = (1e-5, 1e-7) if dtype == torch.float32 else (1e-7, 1e-9)
        rtol = default_r if rtol is None else rtol
        atol = default_a if atol is None else atol
    elif steps is None:
        raise InvalidOptionError(f"solver {solver!r} is fixed-step: give steps=N, or steps='auto' with rtol/atol")
    elif steps == "auto":
        if rtol is None and atol is None:
            raise InvalidOptionError("steps='auto' needs the tolerance to reach: give rtol (and atol)")
    elif not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidOptionError(f"steps must be a positive integer or 'auto', got {steps!r}")
    final = output_times is None
    return _Plan(
        f=_cast_module(model_or_f, dtype), example=example, dtype=dtype,
        times=torch.tensor(times_list, dtype=torch.float64).to(dtype), times_list=times_list, final=final,
        time_inputs=None if not dynamic_times else ("span" if final else "grid"), adaptive=adaptive, solver=solver,
        mode=mode, steps=steps, rtol=float(rtol or 0.0), atol=float(atol or 0.0), batch=batch,
    )


@dataclass(frozen=True)
class _Names:
    """Graph input and output names."""

    states: list[str]
    times: list[str]
    outputs: list[str]  # state outputs, then status (and n_steps)

    @property
    def state_outputs(self) -> list[str]:
        return self.outputs[: len(self.states)]

    @classmethod
    def make(cls, n: int, custom: Sequence[str] | None, time_inputs: str | None, final: bool,
             adaptive: bool) -> "_Names":
        if custom is not None:
            names = list(custom)
            if len(names) != n or len(set(names)) != n or any(not re.fullmatch(r"[A-Za-z_]\w*", s) for s in names):
                raise InvalidOptionError(f"state_names must be {n} distinct identifiers, got {custom!r}")
            reserved = {"status", "n_steps", "t0", "t1", "t"}
            if reserved & set(names):
                raise InvalidOptionError(f"state_names may not use the reserved names {sorted(reserved)}")
            outs = [f"{s}_{'t1' if final else 'ts'}" for s in names]
        else:
            names = ["y0"] if n == 1 else [f"y0_{i}" for i in range(n)]
            outs = [("y1" if final else "ys") + s[2:] for s in names]
        times = [] if time_inputs is None else (["t0", "t1"] if time_inputs == "span" else ["t"])
        return cls(names, times, outs + ["status"] + (["n_steps"] if adaptive else []))


def _trace(plan: _Plan, prepared: PreparedSolve, names: _Names, dynamic_batch: bool, opset: int) -> tuple[Any, str]:
    """The ONNX model (stack traces stripped) and which exporter made it."""
    times, example = plan.times, plan.example
    grid_index = grid_frac = None
    if plan.time_inputs and prepared.grid is not None:
        grid_index, grid_frac = grid_plan(prepared.grid.times, times)
    if plan.mode == "loop":
        # The output-time buffer's length must stay static inside the traced loop body.
        torch._dynamo.mark_static(prepared.problem.t_interior)
    graph = SolveGraph(plan.f, prepared, time_inputs=plan.time_inputs, final_only=plan.final,
                       grid_index=grid_index, grid_frac=grid_frac)
    t_args: tuple[Tensor, ...] = ()
    if plan.time_inputs == "span":
        t_args = (times[0].clone(), times[-1].clone())
    elif plan.time_inputs == "grid":
        t_args = (times.clone(),)
    comps = _comps(example)
    if dynamic_batch and comps[0].shape[0] < 2:
        # PyTorch specialises batch sizes 0 and 1: trace with 2 rows, the graph serves all.
        comps = tuple(c.expand((2,) + tuple(c.shape[1:])).clone() for c in comps)
    n = len(comps)
    io_names = (names.states + names.times, names.outputs)
    try:
        if plan.mode == "loop":
            proto = export_dynamo(graph, comps + t_args, io_names, [dynamic_batch] * n + [False] * len(t_args), opset)
            exporter = "dynamo"
        else:
            axes: dict[str, dict[int, str]] = {}
            if dynamic_batch:
                axes = {nm: {0: "batch"} for nm in names.states}
                axes.update({nm: {0 if plan.final else 1: "batch"} for nm in names.state_outputs})
                axes.update({nm: {0: "batch"} for nm in names.outputs[n:]})
            proto = export_legacy(graph, comps + t_args, io_names, axes, opset)
            exporter = "torchscript"
    except UnsupportedOpError as e:
        where = "" if "called at" in str(e) else locate_op(plan.f, example, times[0], e.op)
        if not where:
            raise
        raise UnsupportedOpError(
            f"f uses {e.op!r} (called at {where}), which the ONNX exporter cannot express; replace it with "
            "supported operations (or a polynomial/rational approximation)", e.op,
        ) from e
    strip_metadata(proto)
    return proto, exporter


def _metadata(plan: _Plan, prepared: PreparedSolve, names: _Names, auto: AutoSteps | None, exporter: str, *,
              dynamic_batch: bool, opset: int, controller: str, max_steps: int) -> dict[str, Any]:
    import onnx

    adaptive, spec = plan.adaptive, prepared.spec
    return {
        "format": FORMAT,
        "solver": plan.solver,
        "adaptive": adaptive,
        "mode": plan.mode,
        "exporter": exporter,
        "steps": None if adaptive or prepared.grid is None else prepared.grid.steps,
        "steps_auto": auto.as_metadata() if auto is not None else None,
        "rtol": plan.rtol if adaptive else None,
        "atol": plan.atol if adaptive else None,
        "controller": controller if adaptive else None,
        "max_steps": max_steps if adaptive else None,
        "t0": plan.times_list[0],
        "t1": plan.times_list[-1],
        "output_times": None if plan.final else plan.times_list,
        "dynamic_batch": dynamic_batch,
        "dynamic_times": plan.time_inputs is not None,
        "time_inputs": names.times,
        "dtype": str(plan.dtype).replace("torch.", ""),
        "tuple_state": spec.is_tuple,
        "state_inputs": names.states,
        "state_outputs": names.state_outputs,
        "state_shapes": state_shapes(plan.example),
        "batch_mode": plan.batch,
        "opset": opset,
        "onnx_version": onnx.__version__,
        **provenance(),
    }


def _write(proto: Any, meta: dict[str, Any], tmp: Path) -> None:
    set_metadata(proto, meta)
    tmp.write_bytes(proto.SerializeToString())


def _signature(tmp: Path) -> tuple[list[list[Any]], list[list[Any]]]:
    import onnxruntime as ort

    from ._ort import _spec

    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(tmp), sess_options=so, providers=["CPUExecutionProvider"])
    ins = [[x.name, x.dtype, len(x.shape)] for x in map(_spec, s.get_inputs())]
    outs = [[x.name, x.dtype, len(x.shape)] for x in map(_spec, s.get_outputs())]
    return ins, outs


def _eager(f: Any, y: Any, times: Tensor, options: dict[str, Any]) -> tuple[list[Tensor], Tensor]:
    """The eager solve the file must reproduce (``odeserve.solve(..., batch=options["batch"],
    throw=False)``): states in the user's layout, NaN past a failure, and the status per
    sample (a joint solve's one status repeated)."""
    p = prepare(f, y, times, loop="python", **options)
    ys, res = p.run(p.spec.flatten(y))
    sol = build_solution(p, ys, res)
    return list(_comps(sol.ys)), sol.status.reshape(-1).expand(_comps(y)[0].shape[0])


def export_prepare(f: Any, example: Any, times: Tensor, loop: str, options: dict[str, Any]) -> PreparedSolve:
    """The prepared solve every exporter traces.  ``batch="joint"`` (one step size and error
    norm for the whole batch, as ``odeserve.solve``'s default and torchdiffeq) gets the
    batch-free layout of ``compile_solve`` (:class:`odeserve.export.compile._BatchFreeSpec`):
    the whole batch is one row whose size is read from the input, so the graph serves any
    batch size."""
    from .compile import _BatchFreeSpec

    p = prepare(f, example, times, loop=loop, **options)
    if p.spec.per_sample:
        return p
    spec = _BatchFreeSpec(example, per_sample=False)
    return replace(p, spec=spec, problem=replace(p.problem, rhs=make_rhs(f, spec)))


def state_shapes(example: Any) -> list[list[int]]:
    """The per-sample shape of every state component (axis 0 is the batch in every mode)."""
    return [list(c.shape[1:]) for c in _comps(example)]


def _parity_inputs(example: Any, dynamic_batch: bool, batches: Sequence[int], seed: int,
                   time_inputs: str | None, times: Tensor) -> list[tuple[str, Any, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    checks: list[tuple[str, Any, Tensor]] = [("example", example, times)]
    if dynamic_batch:
        for b in batches:
            checks.append((f"batch {b}", _random_like(example, int(b), gen), times))
    if time_inputs is not None:
        shifted = times + 0.5 * (times[-1] - times[0])
        checks.append(("shifted times", example, shifted))
    return checks


def _parity(tmp: Path, f: Any, options: dict[str, Any], want_example: Any, example: Any,
            checks: list[tuple[str, Any, Tensor]], names: _Names, final: bool, times: Tensor) -> dict[str, float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(tmp), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"ONNX Runtime cannot load the exported graph: {type(e).__name__}: {e}") from None
    n = len(names.states)
    errors: dict[str, float] = {}
    for label, y, ts in checks:
        want, want_status = want_example if (y is example and ts is times) else _eager(f, y, ts, options)
        feeds = {nm: c.numpy() for nm, c in zip(names.states, _comps(y))}
        if names.times == ["t0", "t1"]:
            feeds.update(t0=ts[0].numpy(), t1=ts[-1].numpy())
        elif names.times == ["t"]:
            feeds["t"] = ts.numpy()
        try:
            got = session.run(None, feeds)
        except Exception as e:  # noqa: BLE001
            raise ParityError(f"ONNX Runtime failed on the {label} input: {type(e).__name__}: {e}; no file was written",
                              {label: math.inf}, 0.0) from None
        err = 0.0
        for i in range(n):
            w = want[i][-1] if final else want[i]
            err = max(err, parity_error(got[i], w))
        status = torch.from_numpy(got[n])
        if not torch.equal(status, want_status):
            err = math.inf
        errors[label] = err
    return errors
