"""PyTorch-native artifacts of a whole solve, gated on parity with the eager solve.

Three formats, one prepared solve (:class:`odeserve.export._onnx_trace.SolveGraph`, the
module the ONNX exporter traces too), so every artifact has the same signature:
``(*states[, t0, t1 | t]) -> (*state outputs, status[, n_steps])``, any batch size.

* :func:`to_torchscript` — a TorchScript file for ``torch.jit.load`` and LibTorch's
  ``torch::jit::load`` (``examples/libtorch``).  Fixed-step solvers are traced step by step
  (``loop="python"``, unrolled: exact, and the fastest TorchScript at a few hundred steps,
  but the graph, its load time and first call grow with the step count).  Adaptive solvers
  keep their loop: the step is traced and a scripted ``while`` drives it
  (:mod:`odeserve.export._script_loop`).  TorchScript is deprecated upstream; the torch
  warnings are caught and replaced by one :class:`TorchScriptDeprecationWarning`.
* :func:`to_exported_program` — ``torch.export`` of the ``loop="while"`` solve (one
  ``torch.while_loop``: graph size independent of the step count, fixed or adaptive),
  saved with ``torch.export.save`` (a ``.pt2`` for ``torch.export.load``).
* :func:`to_aoti` — the same exported program compiled ahead of time by AOTInductor into a
  ``.pt2`` package of C++/shared-library code (:func:`load_aoti`; minutes to compile).

Each file is written under a temporary name in the target folder, loaded back the way a
user loads it, and run on the example and on fresh batches (1, 7, 256 by default) against
the eager ``odeserve.solve``; past the tolerance :class:`ParityError` is raised and nothing
is left behind.  The metadata (solver, steps or tolerances, span, dtype, parity, versions)
travels inside the file: ``extra/odeserve.json`` in the archive (TorchScript
``_extra_files``, ``torch.export.save(extra_files=)``; for AOTInductor also the package's
own ``aot_inductor.metadata``, which C++ reads with ``get_metadata()``).
:func:`read_artifact_metadata` reads any of them, and ONNX files, without loading weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils import _pytree as pytree

from odeserve._api import PreparedSolve, prepare
from odeserve._loop import RUNNING
from odeserve.errors import DtypeMismatchError, InvalidOptionError, OdeserveError, ShapeMismatchError
from odeserve.registry import get_registry
from odeserve.solver import Solver

from ._artifact import (
    DataDependentControlFlowError,
    ExportError,
    InvalidArtifactError,
    ParityError,
    atomic_output,
    check_writable,
    default_tolerance,
    parity_error,
    provenance,
    stringify,
    unprefixed,
)
from ._onnx_trace import (
    _DATA_DEPENDENT,
    ChunkGraph,
    SolveGraph,
    _chain,
    _quiet_logs,
    check_no_value_branches,
    grid_plan,
    user_frame,
)
from ._steps import AutoSteps, calibration_inputs, choose_steps
from ._matvec import REALIZE_OPTIONS, row_block_decompositions
from ._tanh import fast_tanh_decompositions
from .compile import check_threads, kernel_options, thread_options
from .onnx import _comps, _eager, _inference, _Names, _parity_inputs, _Plan, _plan, export_prepare, state_shapes

__all__ = [
    "to_torchscript",
    "to_exported_program",
    "to_aoti",
    "load_aoti",
    "AotiModel",
    "ArtifactExport",
    "read_artifact_metadata",
    "TorchScriptDeprecationWarning",
    "FORMATS",
]

#: The ``format`` each exporter records in its file's metadata.
FORMATS = {"torchscript": "odeserve-torchscript/1", "pt2": "odeserve-pt2/1", "aoti": "odeserve-aoti/1"}
METADATA_FILE = "odeserve.json"
_EXTRA = re.compile(r"[^/]+/extra/" + re.escape(METADATA_FILE))


class TorchScriptDeprecationWarning(FutureWarning):
    """TorchScript (``torch.jit``) is deprecated in PyTorch; the file still works today."""


@dataclass(frozen=True)
class ArtifactExport:
    """What an exporter wrote: the path, its format (a key of :data:`FORMATS`), the metadata
    stored in the file, the parity error per checked input, and the cost (``export_seconds``:
    trace/export/compile; ``metadata["total_seconds"]`` adds the steps search and the gate)."""

    path: Path
    format: str
    metadata: dict[str, Any]
    parity: dict[str, float]
    export_seconds: float
    size_bytes: int
    steps: int | None
    auto_steps: AutoSteps | None = None

    def load(self) -> Callable[..., Any]:
        """The artifact loaded the way a user loads it: a ``torch.jit.ScriptModule``, an
        exported program's ``module()``, or an :class:`AotiModel`."""
        return _BACKENDS[self.format].load(self.path)


# --------------------------------------------------------------------------- public API


def to_torchscript(
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
    dynamic_times: bool = False,
    batch: str = "per_sample",
    dtype: torch.dtype | None = None,
    max_steps: int = 10_000,
    controller: str = "pi",
    parity_tol: float | None = None,
    parity_batches: Sequence[int] = (1, 7, 256),
    calibration: Sequence[Any] | None = None,
    steps_cap: int = 4096,
    seed: int = 0,
) -> ArtifactExport:
    """Write the solve of ``dy/dt = f(t, y)`` as a TorchScript file (``torch.jit.load``,
    LibTorch ``torch::jit::load``); any batch size.

    Arguments as :func:`odeserve.export.to_onnx` (``solver``, ``t0``/``t1`` or
    ``output_times``, ``steps`` — an int or ``"auto"`` — or ``rtol``/``atol`` for adaptive
    solvers, ``dynamic_times``, ``batch`` — ``"per_sample"`` or ``"joint"`` step control —
    ``dtype``, the parity options).  Fixed-step solvers are
    unrolled: each step is in the graph, so keep ``steps`` to a few hundred (per 100 RK4 steps
    of a small MLP here: 2–5 s of trace, 1.5 s of load, 1–2.5 s for the first call of each
    new batch size) or use :func:`to_exported_program` / :func:`to_aoti`.
    Adaptive solvers keep a real loop (traced step, scripted ``while``), any step count.

    ``forward(*states[, t0, t1 | t])`` returns ``(*states at t1 (or at every output time),
    status[, n_steps])``; ``status`` is 0 where a sample succeeded (see
    :class:`odeserve.Status`).  Emits one :class:`TorchScriptDeprecationWarning`.
    """
    return _export("torchscript", model_or_f, example_y0, path, dict(
        solver=solver, t0=t0, t1=t1, steps=steps, rtol=rtol, atol=atol, output_times=output_times,
        dynamic_batch=True, dynamic_times=dynamic_times, batch=batch, dtype=dtype, max_steps=max_steps, controller=controller,
        parity_tol=parity_tol, parity_batches=parity_batches, calibration=calibration, steps_cap=steps_cap,
        seed=seed, progress=False,
    ))


def to_exported_program(
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
    dynamic_batch: bool = True,
    dynamic_times: bool = False,
    batch: str = "per_sample",
    dtype: torch.dtype | None = None,
    max_steps: int = 10_000,
    controller: str = "pi",
    parity_tol: float | None = None,
    parity_batches: Sequence[int] = (1, 7, 256),
    calibration: Sequence[Any] | None = None,
    steps_cap: int = 4096,
    seed: int = 0,
) -> ArtifactExport:
    """Write the solve as a ``torch.export`` program (``.pt2``; load with
    ``torch.export.load(path).module()``).

    The loop is one ``torch.while_loop`` for every solver (the ``loop="while"`` solve that
    ``compile_solve`` compiles), so size and export time do not grow with the step count
    (tens of seconds for an adaptive solver here).  ``dynamic_batch``: the batch axis is a
    ``torch.export.Dim`` with minimum 1 (the metadata's ``batch_min`` says if PyTorch had to
    raise it to 2; then batch 1 is refused by the program's input check).  Other arguments
    and the outputs as :func:`to_torchscript`.  ``path`` must end in ``.pt2``.
    """
    return _export("pt2", model_or_f, example_y0, path, dict(
        solver=solver, t0=t0, t1=t1, steps=steps, rtol=rtol, atol=atol, output_times=output_times,
        dynamic_batch=dynamic_batch, dynamic_times=dynamic_times, batch=batch, dtype=dtype, max_steps=max_steps,
        controller=controller, parity_tol=parity_tol, parity_batches=parity_batches, calibration=calibration,
        steps_cap=steps_cap, seed=seed, progress=False,
    ))


def to_aoti(
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
    dynamic_batch: bool = True,
    dynamic_times: bool = False,
    batch: str = "per_sample",
    dtype: torch.dtype | None = None,
    max_steps: int = 10_000,
    controller: str = "pi",
    parity_tol: float | None = None,
    parity_batches: Sequence[int] = (1, 7, 256),
    calibration: Sequence[Any] | None = None,
    steps_cap: int = 4096,
    seed: int = 0,
    progress: bool = True,
    fast_tanh: bool = True,
    threads: int | None = None,
    prefix_steps: int | str | None = "auto",
    chunk_steps: int | str | None = "auto",
) -> ArtifactExport:
    """Compile the exported program of :func:`to_exported_program` with AOTInductor into a
    ``.pt2`` package (``torch._inductor.aoti_compile_and_package``): generated C++ and a
    shared library, run without Python by LibTorch's ``AOTIModelPackageLoader`` or from
    Python by :func:`load_aoti`.  Compiling takes a minute or more (40–50 s for RK4 100 steps
    or dopri5 with a 2/64 MLP on 2 cores here; the loop is one ``torch.while_loop``, so the
    step count does not add to it); ``progress`` prints the elapsed time to stderr meanwhile.
    The package runs on the CPU type (instruction set) it was compiled on.  ``path`` must
    end in ``.pt2``; arguments and outputs as :func:`to_exported_program`.  ``fast_tanh``:
    float32 ``tanh`` compiled as XLA's rational approximation (:mod:`odeserve.export._tanh`:
    ≤ 3.1 float32 eps; 1.1–1.2× faster at batch 1); recorded in the metadata.  ``threads``:
    the thread count the package's kernels are written for (Inductor's ``cpp.threads``,
    recorded as ``threads``): 1 writes serial code; ``k`` > 1 splits the kernel loops into
    OpenMP regions of ``k`` threads each (Inductor writes ``num_threads(k)``: serve it with
    ``k`` cores — on fewer the team waits on the scheduler at every barrier).  ``None``: 1
    for a package of exactly one row (``dynamic_batch=False`` at batch 1: OpenMP regions
    cost a one-row solve more than they save, see
    :func:`odeserve.export.compile.check_threads`), otherwise Inductor's default (this
    process's ``torch.get_num_threads()``, the team size left to the serving process when
    that is the machine's core count).

    ``prefix_steps``: a one-row adaptive package (``dynamic_batch=False`` at batch 1) also
    holds a second model, ``"prefix"``: the start and that many step attempts as straight-line
    code, with no loop, so AOTInductor keeps every buffer on the stack (a loop allocates each
    one on the heap every iteration: the prefix ran the batch-1 dopri5 benchmark ≈ 5× faster,
    README "Latency against diffrax").  :func:`load_aoti` runs it first and, if the sample is
    not done after that many attempts (status ``RUNNING``), runs the full model (``"model"``,
    the whole loop) instead, so every input gets the loop's answer.  ``"auto"``: the attempts
    the example (and ``calibration``) needed, plus a quarter and at least 2, at most 32;
    ``0``/``None``: no prefix model.  An explicit count needs an adaptive solver and a
    one-row package.  Recorded as ``prefix_steps``; each attempt adds to the compile time.

    ``chunk_steps``: the same for a one-row fixed-step package whose output is the final
    state at fixed times: a ``"chunk"`` model runs that many steps from a step index as
    straight-line code (``forward(*states, i) -> (*states, i + k, status)``, stack-allocated),
    and :func:`load_aoti` calls it ``ceil(steps / k)`` times instead of running the loop
    (steps past the end leave the state unchanged).  ``"auto"``: ``min(4, steps)`` (a chunk's
    buffers must fit AOTInductor's 100 KB stack budget); ``0``/``None``: none.  Recorded as
    ``chunk_steps`` and ``chunk_calls``.  Both straight-line models compile batch-1 linear
    layers as four row-block reductions (:mod:`odeserve.export._matvec`: four accumulators
    per loop, the same sums in the same order).
    """
    check_threads(threads)
    return _export("aoti", model_or_f, example_y0, path, dict(
        solver=solver, t0=t0, t1=t1, steps=steps, rtol=rtol, atol=atol, output_times=output_times,
        dynamic_batch=dynamic_batch, dynamic_times=dynamic_times, batch=batch, dtype=dtype, max_steps=max_steps,
        controller=controller, parity_tol=parity_tol, parity_batches=parity_batches, calibration=calibration,
        steps_cap=steps_cap, seed=seed, progress=progress, fast_tanh=fast_tanh, threads=threads,
        prefix_steps=prefix_steps, chunk_steps=chunk_steps,
    ))


class AotiModel:
    """An AOTInductor package written by :func:`to_aoti`, loaded: ``model(*states[, times])``
    returns the tuple of outputs.  Inputs are checked against the metadata first (count,
    dtype, per-sample shape, batch size), since the compiled code trusts its inputs.

    A one-row package may also hold straight-line models (:func:`to_aoti`'s ``prefix_steps``
    and ``chunk_steps``), which the call runs instead of the loop where they apply;
    ``loop_only=True`` runs the looping model alone.

    The package's loop allocates its buffers every iteration: at small batches serve it with
    tcmalloc or jemalloc preloaded (``LD_PRELOAD``), 1.6–2× faster at batch 1 than glibc's
    allocator here (README, "Latency against diffrax")."""

    def __init__(self, path: str | Path, *, run_single_threaded: bool = False, loop_only: bool = False) -> None:
        self.path = Path(path)
        self.metadata = read_artifact_metadata(self.path)
        if self.metadata.get("format") != FORMATS["aoti"]:
            raise InvalidArtifactError(
                f"{str(path)!r} is a {self.metadata.get('format', 'non-odeserve')} file, not an odeserve AOTInductor "
                "package (to_aoti)"
            )
        self.dtype = getattr(torch, self.metadata["dtype"])
        self.state_shapes = [tuple(s) for s in json.loads(self.metadata["state_shapes"])]
        self._inputs = InputSpec.of(self.path.name, self.metadata)
        with _quiet():
            self._model = torch._inductor.aoti_load_package(str(self.path), run_single_threaded=run_single_threaded)
        self._run = _flat_runner(self._model)
        # A one-row package's straight-line models (to_aoti): the adaptive prefix answers when
        # the sample is done within its attempts (else the loop does); the fixed-step chunk
        # is called chunk_calls times instead of the loop.
        self.prefix_steps = int(self.metadata.get("prefix_steps", "0"))
        self.chunk_steps = int(self.metadata.get("chunk_steps", "0"))
        self.chunk_calls = int(self.metadata.get("chunk_calls", "0"))
        self._prefix = _loaded(self.path, "prefix", run_single_threaded) if self.prefix_steps and not loop_only else None
        self._chunk = _loaded(self.path, "chunk", run_single_threaded) if self.chunk_steps and not loop_only else None
        self._status = len(self.state_shapes)  # outputs: the states, then the status

    def __call__(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        self._inputs.check(inputs)
        if self._prefix is not None:
            out = self._prefix(list(inputs))
            if int(out[self._status]) != RUNNING:  # one row: one status
                return tuple(out)
        if self._chunk is not None:
            n = self._status
            carry, step = list(inputs), torch.zeros((), dtype=torch.int64)
            for _ in range(self.chunk_calls):
                out = self._chunk([*carry, step])
                carry, step = out[:n], out[n]
            return (*carry, out[n + 1])
        if self._run is not None:
            return tuple(self._run(list(inputs)))
        return tuple(self._model(*inputs))


@dataclass(frozen=True)
class InputSpec:
    """What an artifact's call takes, read once from its metadata; :meth:`check` tests a
    call's positional inputs against it (count, dtype, per-sample shape, batch size), since
    compiled code trusts its inputs.  The check is on every call of a 30 µs batch-1 solve,
    so the passing case is one loop; the message is worked out only for a refusal."""

    name: str
    dtype: torch.dtype
    tails: tuple[tuple[int, ...], ...]  # per state input: its shape after the batch axis
    n_times: int
    batch_min: int
    batch: int | None  # None: any batch from batch_min
    slots: tuple[tuple[int, ...] | None, ...] = dataclasses.field(init=False, repr=False)  # per input

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", self.tails + (None,) * self.n_times)

    @classmethod
    def of(cls, name: str, meta: dict[str, str]) -> "InputSpec":
        return cls(name, getattr(torch, meta["dtype"]), tuple(tuple(s) for s in json.loads(meta["state_shapes"])),
                   len(json.loads(meta.get("time_inputs", "[]"))), int(meta.get("batch_min", "1")),
                   None if meta.get("dynamic_batch") == "true" else int(meta["batch"]))

    def check(self, inputs: Sequence[Any]) -> None:
        slots = self.slots
        if len(inputs) != len(slots):
            self._refuse(inputs)
        dtype = self.dtype
        for x, tail in zip(inputs, slots):
            if not isinstance(x, Tensor) or x.dtype != dtype or (tail is not None and x.shape[1:] != tail):
                self._refuse(inputs)
        rows = inputs[0].shape[0]
        if rows < self.batch_min or (self.batch is not None and rows != self.batch) or (
                len(self.tails) > 1 and any(x.shape[0] != rows for x in inputs[1:len(self.tails)])):
            self._refuse(inputs)

    def _refuse(self, inputs: Sequence[Any]) -> None:
        """Raise the error that says what is wrong with ``inputs``."""
        n = len(self.tails)
        if len(inputs) != n + self.n_times:
            raise ShapeMismatchError(f"{self.name} takes {n} state tensor(s) and {self.n_times} time input(s), "
                                     f"got {len(inputs)} inputs")
        for i, x in enumerate(inputs):
            if not isinstance(x, Tensor) or x.dtype != self.dtype:
                raise DtypeMismatchError(f"input {i} must be a {self.dtype} tensor, got "
                                         f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
            if i < n and x.shape[1:] != self.tails[i]:
                raise ShapeMismatchError(f"state input {i} must be (batch, {', '.join(map(str, self.tails[i]))}), "
                                         f"got {tuple(x.shape)}")
        rows = [int(x.shape[0]) for x in inputs[:n]]
        if len(set(rows)) > 1:
            raise ShapeMismatchError(f"the state inputs of {self.name} must share their batch size (axis 0), got {rows}")
        allowed = f"exactly {self.batch}" if self.batch is not None else f"at least {self.batch_min}"
        raise ShapeMismatchError(f"{self.name} takes a batch of {allowed}, got {rows[0]}")


def _loaded(path: Path, name: str, run_single_threaded: bool) -> Callable[[list[Tensor]], list[Tensor]]:
    """Another model of a package (``prefix``, ``chunk``), called with a list of tensors."""
    from torch._inductor.package import load_package

    with _quiet():
        model = load_package(str(path), name, run_single_threaded=run_single_threaded)
    return _flat_runner(model) or (lambda xs: list(model(*xs)))


def _flat_runner(model: Any) -> Callable[[list[Tensor]], list[Tensor]] | None:
    """The package's C++ ``run`` when its calling convention is flat tensors in, a flat tuple
    out (every package :func:`to_aoti` writes).  ``AOTICompiledModel.__call__`` re-parses
    both pytree specs on every call: ~35 µs, a third of a batch-1 dopri5 solve."""
    try:
        in_spec, out_spec = (pytree.treespec_loads(s) for s in model.loader.get_call_spec())
    except Exception:  # noqa: BLE001 - an unusual package: keep the generic call
        return None
    args, kwargs = in_spec.children() if in_spec.num_children == 2 else (None, None)
    flat_in = args is not None and args.type is tuple and all(c.is_leaf() for c in args.children()) and (
        kwargs.num_leaves == 0)
    flat_out = out_spec.type is tuple and all(c.is_leaf() for c in out_spec.children())
    return model.loader.run if flat_in and flat_out else None


def load_aoti(path: str | Path, *, run_single_threaded: bool = False) -> AotiModel:
    """Load a package written by :func:`to_aoti` (see :class:`AotiModel`)."""
    return AotiModel(path, run_single_threaded=run_single_threaded)


def read_artifact_metadata(path: str | Path) -> dict[str, str]:
    """The odeserve metadata of any exported file — TorchScript ``.pt``, exported program or
    AOTInductor ``.pt2``, ONNX — as strings, without loading the model."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    if not zipfile.is_zipfile(p):
        from .onnx import read_metadata

        return read_metadata(p)
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            extra = [n for n in names if _EXTRA.fullmatch(n)]
            if extra:
                meta = unprefixed(json.loads(z.read(extra[0])))
                if meta:
                    return meta
            for n in names:  # an AOTInductor package without the extra file: its compiled-in metadata
                if "/aotinductor/" in n and n.endswith("wrapper_metadata.json"):
                    meta = unprefixed(json.loads(z.read(n)))
                    if meta:
                        return meta
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise InvalidArtifactError(f"{str(p)!r} is not a readable PyTorch archive: {type(e).__name__}: {e}") from None
    raise InvalidArtifactError(f"{str(p)!r} is a PyTorch archive without odeserve metadata (not written by "
                               "odeserve.export)")


# --------------------------------------------------------------------------- the shared flow


def _export(fmt: str, model_or_f: Any, example_y0: Any, path: str | Path, o: dict[str, Any]) -> ArtifactExport:
    t_start = time.perf_counter()
    backend = _BACKENDS[fmt]
    path = check_writable(path)  # before the slow part
    if backend.suffix == ".pt2" and path.suffix != ".pt2":
        raise InvalidOptionError(
            f"{backend.label} files must end in .pt2 (PyTorch's loaders check it); got {str(path)!r}")
    adaptive = bool(get_registry().solver(o["solver"]).adaptive)
    # TorchScript unrolls fixed steps (one trace through the Python loop); everything else loops.
    mode = "unrolled" if fmt == "torchscript" and not adaptive else "loop"
    plan = _plan(model_or_f, example_y0, solver=o["solver"], t0=o["t0"], t1=o["t1"], steps=o["steps"], rtol=o["rtol"],
                 atol=o["atol"], output_times=o["output_times"], mode=mode, dtype=o["dtype"], opset=20,
                 dynamic_times=o["dynamic_times"], batch=o["batch"])
    f, example, times = plan.f, plan.example, plan.times
    with _inference(f):
        check_no_value_branches(f, example, times[0])  # seconds, before minutes of export
        auto: AutoSteps | None = None
        if plan.steps == "auto":
            auto = choose_steps(f, calibration_inputs(example, o["calibration"]), times, solver=plan.solver,
                                rtol=1e-6 if o["rtol"] is None else o["rtol"],
                                atol=0.0 if o["atol"] is None else o["atol"], cap=o["steps_cap"])
        options: dict[str, Any] = dict(solver=plan.solver, max_steps=o["max_steps"], batch=plan.batch)
        if adaptive:
            options.update(rtol=plan.rtol, atol=plan.atol, controller=o["controller"])
        else:
            options.update(steps=auto.steps if auto is not None else plan.steps)
        want_example = _eager(f, example, times, options)  # before tracing: f's own state stays eager
        prepared = export_prepare(f, example, times, "python" if mode == "unrolled" else "while", options)
        names = _Names.make(len(_comps(example)), None, plan.time_inputs, plan.final, adaptive)
        dynamic = bool(o["dynamic_batch"])

        t_build = time.perf_counter()
        one_row = not dynamic and _comps(example)[0].shape[0] == 1
        if "prefix_steps" in o:
            attempts = _prefix_attempts(o["prefix_steps"], f, calibration_inputs(example, o["calibration"]), times,
                                        options, adaptive=adaptive, one_row=one_row)
            chunk = _chunk_steps(o["chunk_steps"], plan, prepared, one_row=one_row)
            artifact, info = backend.build(plan, prepared, dynamic, o["progress"], prefix_attempts=attempts,
                                           chunk_steps=chunk)
            info["prefix_steps"] = attempts
            info["chunk_steps"] = chunk
            info["chunk_calls"] = -(-prepared.grid.steps // chunk) if chunk else 0
        else:
            artifact, info = backend.build(plan, prepared, dynamic, o["progress"])
        meta = _metadata(fmt, plan, prepared, names, auto, info, dynamic=dynamic, controller=o["controller"],
                         max_steps=o["max_steps"])
        if "fast_tanh" in o:
            meta["fast_tanh"] = bool(o["fast_tanh"]) and plan.dtype == torch.float32
        if "threads" in o:
            # None: Inductor's default (this process's thread count), recorded as that count
            meta["threads"] = o["threads"] or (1 if one_row else None)
        with atomic_output(path) as tmp, _work_file(tmp, backend.suffix) as work:
            backend.save(artifact, meta, work, o["progress"])
            build_seconds = time.perf_counter() - t_build
            tol = o["parity_tol"] if o["parity_tol"] is not None else default_tolerance(plan.dtype)
            if adaptive and o["parity_tol"] is None and plan.dtype == torch.float32:
                tol = max(tol, 10 * plan.rtol)  # borderline float32 accept/reject decisions may differ
            checks = _parity_inputs(example, dynamic, o["parity_batches"], o["seed"], plan.time_inputs, times)
            errors = _parity(backend, work, f, options, want_example, example, checks, names, plan.final, times)
            worst = max(errors.values())
            if not worst <= tol:
                detail = ", ".join(f"{k}: {v:.3g}" for k, v in errors.items())
                raise ParityError(
                    f"the {backend.label} file does not reproduce the eager solve: max error {worst:.3g} > tolerance "
                    f"{tol:.3g} ({detail}); no file was written. If the difference is expected (e.g. borderline "
                    "float32 accept/reject decisions), raise parity_tol",
                    errors, tol,
                )
            meta.update(parity_error=worst, parity_tolerance=tol, parity_checks=errors)
            meta["export_seconds"] = round(build_seconds, 3)
            meta["total_seconds"] = round(time.perf_counter() - t_start, 3)
            backend.finish(artifact, meta, work)
    if fmt == "torchscript":
        warnings.warn(
            "TorchScript is deprecated in PyTorch (torch.jit.trace/script warn since 2.x and may go away); "
            f"odeserve caught those warnings while writing {path.name}, which loads today with torch.jit.load and "
            "LibTorch's torch::jit::load. For new deployments prefer odeserve.export.to_exported_program "
            "(torch.export) or to_aoti (AOTInductor)",
            TorchScriptDeprecationWarning, stacklevel=3,
        )
    steps_out = None if adaptive else int(meta["steps"])
    return ArtifactExport(path, fmt, meta, errors, meta["export_seconds"], path.stat().st_size, steps_out, auto)


PREFIX_STEPS_CAP = 32  # straight-line attempts add compile time (≈ 15-25 s each for a small MLP here)


def _straight_line_setting(name: str, setting: int | str | None) -> int | str:
    """``prefix_steps`` / ``chunk_steps`` checked: ``"auto"``, or a count (``None``: 0)."""
    if setting is None or setting == "auto":
        return setting or 0
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise InvalidOptionError(f"{name} must be 'auto', None or a step count >= 0, got {setting!r}")
    return setting


def _prefix_attempts(setting: int | str | None, f: Any, inputs: Any, times: Tensor, options: dict[str, Any], *,
                     adaptive: bool, one_row: bool) -> int:
    """The step attempts an AOTInductor package's ``prefix`` model unrolls (0: none); see
    :func:`to_aoti`'s ``prefix_steps``."""
    setting = _straight_line_setting("prefix_steps", setting)
    if setting == 0:
        return 0
    if setting == "auto":
        if not (adaptive and one_row):
            return 0
        p = prepare(f, inputs, times, loop="python", **options)
        _, res = p.run(p.spec.flatten(inputs))
        most = int((res.accepted + res.rejected).max())
        return min(PREFIX_STEPS_CAP, most + max(2, most // 4))
    if not adaptive:
        raise InvalidOptionError("prefix_steps is for adaptive solvers (a fixed-step solve has no attempts to "
                                 "unroll); pass prefix_steps=None")
    if not one_row:
        raise InvalidOptionError("prefix_steps needs a one-row package (dynamic_batch=False with a batch of 1): "
                                 "the prefix keeps its buffers on the stack; pass prefix_steps=None")
    return setting


def _chunk_steps(setting: int | str | None, plan: _Plan, prepared: PreparedSolve, *, one_row: bool) -> int:
    """The steps per call of an AOTInductor package's ``chunk`` model (0: none); see
    :func:`to_aoti`'s ``chunk_steps``."""
    setting = _straight_line_setting("chunk_steps", setting)
    if setting == 0:
        return 0
    grid = prepared.grid
    fits = grid is not None and one_row and plan.final and plan.time_inputs is None and \
        type(prepared.problem.solver).augment is Solver.augment
    if setting == "auto":
        return min(4, grid.steps) if fits and grid is not None else 0
    if not fits:
        raise InvalidOptionError(
            "chunk_steps needs a fixed-step solver whose loop state is the state, a one-row package "
            "(dynamic_batch=False with a batch of 1), the final state as the only output and fixed times; "
            "pass chunk_steps=None")
    return setting


def _solve_graph(plan: _Plan, prepared: PreparedSolve, dynamic: bool) -> tuple[SolveGraph, tuple[Tensor, ...]]:
    """The module to trace or export and its example inputs (at least 2 rows when the batch
    is dynamic: PyTorch specialises sizes 0 and 1)."""
    times = plan.times
    grid_index = grid_frac = None
    if plan.time_inputs and prepared.grid is not None:
        grid_index, grid_frac = grid_plan(prepared.grid.times, times)
    graph = SolveGraph(plan.f, prepared, time_inputs=plan.time_inputs, final_only=plan.final,
                       grid_index=grid_index, grid_frac=grid_frac)
    t_args: tuple[Tensor, ...] = ()
    if plan.time_inputs == "span":
        t_args = (times[0].clone(), times[-1].clone())
    elif plan.time_inputs == "grid":
        t_args = (times.clone(),)
    comps = _comps(plan.example)
    if dynamic and comps[0].shape[0] < 2:
        comps = tuple(c.expand((2,) + tuple(c.shape[1:])).clone() for c in comps)
    return graph, comps + t_args


def _metadata(fmt: str, plan: _Plan, prepared: PreparedSolve, names: _Names, auto: AutoSteps | None,
              info: dict[str, Any], *, dynamic: bool, controller: str, max_steps: int) -> dict[str, Any]:
    adaptive, spec = plan.adaptive, prepared.spec
    return {
        "format": FORMATS[fmt],
        "solver": plan.solver,
        "adaptive": adaptive,
        "mode": plan.mode,
        "steps": None if adaptive or prepared.grid is None else prepared.grid.steps,
        "steps_auto": auto.as_metadata() if auto is not None else None,
        "rtol": plan.rtol if adaptive else None,
        "atol": plan.atol if adaptive else None,
        "controller": controller if adaptive else None,
        "max_steps": max_steps if adaptive else None,
        "t0": plan.times_list[0],
        "t1": plan.times_list[-1],
        "output_times": None if plan.final else plan.times_list,
        "dynamic_batch": dynamic,
        "batch": None if dynamic else _comps(plan.example)[0].shape[0],
        "dynamic_times": plan.time_inputs is not None,
        "time_inputs": names.times,
        "dtype": str(plan.dtype).replace("torch.", ""),
        "tuple_state": spec.is_tuple,
        "state_inputs": names.states,
        "outputs": names.outputs,
        "state_shapes": state_shapes(plan.example),
        "batch_mode": plan.batch,
        **info,
        **provenance(),
    }


def _parity(backend: "_Backend", work: Path, f: Any, options: dict[str, Any], want_example: Any, example: Any,
            checks: list[tuple[str, Any, Tensor]], names: _Names, final: bool, times: Tensor) -> dict[str, float]:
    """Load the written file as a user would and compare it with the eager solve on every check."""
    try:
        variants = backend.load_variants(work)
    except OdeserveError:
        raise
    except Exception as e:  # noqa: BLE001 - any loader failure means the file is unusable
        raise ExportError(f"the {backend.label} file cannot be loaded back: {type(e).__name__}: {e}") from None
    n = len(names.states)
    errors: dict[str, float] = {}
    for label, y, ts in checks:
        want, want_status = want_example if (y is example and ts is times) else _eager(f, y, ts, options)
        t_in: tuple[Tensor, ...] = ()
        if names.times == ["t0", "t1"]:
            t_in = (ts[0].clone(), ts[-1].clone())
        elif names.times == ["t"]:
            t_in = (ts.clone(),)
        for how, model in variants:
            try:
                with torch.no_grad():
                    got = model(*_comps(y), *t_in)
            except Exception as e:  # noqa: BLE001
                raise ParityError(f"the {backend.label} file{how} failed on the {label} input: "
                                  f"{type(e).__name__}: {e}; no file was written", {label + how: math.inf}, 0.0) from None
            err = max(parity_error(got[i], want[i][-1] if final else want[i]) for i in range(n))
            if not torch.equal(got[n].reshape(-1), want_status):
                err = math.inf
            errors[label + how] = err
    return errors


# --------------------------------------------------------------------------- the formats


class _Backend:
    label: str
    suffix: str

    def load_variants(self, path: Path) -> list[tuple[str, Callable[..., Any]]]:
        """Every way a user may run the written file (the parity gate checks each)."""
        return [("", self.load(path))]

    def build(self, plan: _Plan, prepared: PreparedSolve, dynamic: bool, progress: bool) -> tuple[Any, dict[str, Any]]:
        """The in-memory artifact and what it adds to the metadata."""
        raise NotImplementedError

    def save(self, artifact: Any, meta: dict[str, Any], work: Path, progress: bool) -> None:
        raise NotImplementedError

    def finish(self, artifact: Any, meta: dict[str, Any], work: Path) -> None:
        """Store the final metadata (with the parity results) in the written file."""
        self.save(artifact, meta, work, False)

    def load(self, path: Path) -> Callable[..., Any]:
        raise NotImplementedError


class _TorchScript(_Backend):
    label, suffix = "TorchScript", ".pt"

    def build(self, plan: _Plan, prepared: PreparedSolve, dynamic: bool, progress: bool) -> tuple[Any, dict[str, Any]]:
        from ._script_loop import script_adaptive

        graph, args = _solve_graph(plan, prepared, dynamic=True)
        with _quiet(), _translated("torch.jit"):
            if plan.adaptive:
                graph.prepared = script_adaptive(plan.f, prepared, _pack_like(args, plan))
                graph.driver = graph.prepared.driver  # a submodule, so it is saved with the file
            module = torch.jit.trace(graph, args, check_trace=False)
        how = ("torch.jit.trace (step) + torch.jit.script (while loop)" if plan.adaptive
               else "torch.jit.trace (unrolled)")
        return module, {"exporter": how, "batch_min": 1}

    def save(self, artifact: Any, meta: dict[str, Any], work: Path, progress: bool) -> None:
        with _quiet():
            torch.jit.save(artifact, str(work), _extra_files={METADATA_FILE: json.dumps(stringify(meta))})

    def load(self, path: Path) -> Callable[..., Any]:
        with _quiet():
            return torch.jit.load(str(path), map_location="cpu")


class _ExportedProgram(_Backend):
    label, suffix = "exported-program", ".pt2"

    def build(self, plan: _Plan, prepared: PreparedSolve, dynamic: bool, progress: bool) -> tuple[Any, dict[str, Any]]:
        graph, args = _solve_graph(plan, prepared, dynamic)
        # The output-time buffer's length must stay static inside the traced loop body.
        torch._dynamo.mark_static(prepared.problem.t_interior)
        n_states = len(_comps(plan.example))
        with _progress("exporting with torch.export", progress):
            for batch_min in ((1, 2) if dynamic else (None,)):
                shapes = (tuple({0: torch.export.Dim("batch", min=batch_min)} if dynamic and i < n_states else None
                                for i in range(len(args))),)  # forward(*inputs): one varargs entry
                try:
                    with _quiet(), _translated("torch.export"):
                        program = torch.export.export(graph, args, dynamic_shapes=shapes, strict=False)
                    break
                except ExportError as e:
                    # PyTorch may specialise a dimension of size 1; then the batch starts at 2.
                    if batch_min != 1 or "batch" not in str(e):
                        raise
        return program, {"exporter": "torch.export", "batch_min": batch_min or 1}

    def save(self, artifact: Any, meta: dict[str, Any], work: Path, progress: bool) -> None:
        torch.export.save(artifact, str(work), extra_files={METADATA_FILE: json.dumps(stringify(meta))})

    def load(self, path: Path) -> Callable[..., Any]:
        with _quiet():
            return torch.export.load(str(path)).module()


@contextlib.contextmanager
def _stack_allocating_wrapper() -> Iterator[None]:
    """Inductor chooses its CPU C++ wrapper class once per process, at its first compile
    (``init_backend_registration`` is cached): the class that can keep buffers on the stack
    only if ``allow_stack_allocation`` was on then.  So after any earlier compile in the
    process (``compile_solve``, another package) a straight-line model would silently keep
    its heap allocations (torch 2.13).  Register that class for the CPU while it compiles
    (Inductor's ``register_backend_for_device`` table), and put the previous entry back."""
    try:
        from torch._inductor.codegen import common
        from torch._inductor.codegen.cpp_wrapper_cpu_array_ref import CppWrapperCpuArrayRef

        common.init_backend_registration()
        before = common.device_codegens["cpu"]
        swapped = dataclasses.replace(before, cpp_wrapper_codegen=CppWrapperCpuArrayRef)
    except (ImportError, AttributeError, KeyError, TypeError):  # another torch: compile as it chooses
        yield
        return
    common.device_codegens["cpu"] = swapped
    try:
        yield
    finally:
        common.device_codegens["cpu"] = before


@dataclass
class _AotiPrograms:
    """What an AOTInductor package is compiled from: the whole solve (``"model"``) and, for a
    one-row package, a straight-line ``"prefix"`` (adaptive) or ``"chunk"`` (fixed step); see
    :func:`to_aoti`'s ``prefix_steps`` and ``chunk_steps``."""

    model: Any
    prefix: Any | None = None
    chunk: Any | None = None

    def straight_line(self) -> dict[str, Any]:
        """The loop-free models, which AOTInductor may give stack buffers."""
        return {k: v for k, v in (("prefix", self.prefix), ("chunk", self.chunk)) if v is not None}


class _Aoti(_ExportedProgram):
    label = "AOTInductor"

    def build(self, plan: _Plan, prepared: PreparedSolve, dynamic: bool, progress: bool,
              prefix_attempts: int = 0, chunk_steps: int = 0) -> tuple[Any, dict[str, Any]]:
        program, info = super().build(plan, prepared, dynamic, progress)
        out = _AotiPrograms(program)
        if prefix_attempts:
            unrolled = dataclasses.replace(prepared, unrolled_attempts=prefix_attempts)
            out.prefix, _ = super().build(plan, unrolled, dynamic, progress)
        if chunk_steps:
            comps = _comps(plan.example)
            start = torch.zeros((), dtype=torch.int64, device=comps[0].device)
            with _quiet(), _translated("torch.export"):
                out.chunk = torch.export.export(ChunkGraph(plan.f, prepared, chunk_steps), (*comps, start),
                                                strict=False)
        return out, {**info, "exporter": "torch.export + AOTInductor"}

    def save(self, artifact: Any, meta: dict[str, Any], work: Path, progress: bool) -> None:
        # The settings go into the compiled package (C++ reads them with get_metadata()).
        # kernel_options: a batch-1 package's matrix products become Inductor's own fused
        # code instead of an ATen call per layer (1.9-2.2x faster at batch 1 here,
        # bench/results/latency.md; symbolic batches are unchanged), and the kernels use FMAs.
        threads = meta["threads"]  # None: Inductor's default, which writes for this process's count
        if threads is None:
            meta["threads"] = torch.get_num_threads()
        configs = {"aot_inductor.metadata": stringify(meta), **kernel_options(), **thread_options(threads)}
        if meta.get("batch_mode") == "joint":
            # A joint loop starts from 0-d tensors (the start time); Inductor would inline a
            # 0-d constant as a literal, which its while_loop cannot take as a carried input
            # ("LoweringException: NotImplementedError: Constant", torch 2.13).
            configs["always_keep_tensor_constants"] = True
        # The straight-line models (prefix, chunk) have no loop, so their buffers can live on
        # the stack (allow_stack_allocation: no heap allocation per buffer and call; it does
        # not compile with a while loop in torch 2.13, "no match for operator= ...
        # ArrayRefTensor"), and their batch-1 matrix products are four row blocks
        # (odeserve.export._matvec: four accumulators per loop; RK4 (b) 6.2 -> 3.2 ms paired).
        straight = {**configs, "aot_inductor.allow_stack_allocation": True, **REALIZE_OPTIONS}
        models = {"model": artifact.model, **artifact.straight_line()}
        with _progress("compiling with AOTInductor (a minute or more)", progress), _quiet(), _translated("AOTInductor"):
            files = {}
            for name, program in models.items():
                loop_free = name != "model"
                if meta.get("fast_tanh"):
                    program = program.run_decompositions(fast_tanh_decompositions())
                if loop_free:
                    program = program.run_decompositions(row_block_decompositions())
                # What aoti_compile_and_package does for one program; package_aoti takes several.
                args, kwargs = program.example_inputs
                with _stack_allocating_wrapper() if loop_free else contextlib.nullcontext():
                    files[name] = torch._inductor.aot_compile(
                        program.module(check_guards=False), args, kwargs,
                        options={**(straight if loop_free else configs), "aot_inductor.package": True})
            from torch._inductor.package import package_aoti

            package_aoti(str(work), files)

    def finish(self, artifact: Any, meta: dict[str, Any], work: Path) -> None:
        # Recompiling for the parity results would cost minutes: they go into the archive
        # as extra/odeserve.json (the package loader ignores files it does not know).
        with zipfile.ZipFile(work, "a") as z:
            root = z.namelist()[0].split("/")[0]
            z.writestr(f"{root}/extra/{METADATA_FILE}", json.dumps(stringify(meta)))

    def load(self, path: Path) -> Callable[..., Any]:
        return AotiModel(path)

    def load_variants(self, path: Path) -> list[tuple[str, Callable[..., Any]]]:
        model = AotiModel(path)
        if model.prefix_steps == 0 and model.chunk_steps == 0:
            return [("", model)]
        return [("", model), (" (looping model alone)", AotiModel(path, loop_only=True))]


_BACKENDS: dict[str, _Backend] = {"torchscript": _TorchScript(), "pt2": _ExportedProgram(), "aoti": _Aoti()}


# --------------------------------------------------------------------------- helpers


def _pack_like(args: tuple[Tensor, ...], plan: _Plan) -> Any:
    """The state part of the example inputs in the user's layout."""
    comps = args[: len(_comps(plan.example))]
    return tuple(comps) if isinstance(plan.example, (tuple, list)) else comps[0]


@contextlib.contextmanager
def _work_file(tmp: Path, suffix: str) -> Iterator[Path]:
    """A sibling of the atomic temporary file whose name ends in ``suffix`` (PyTorch's PT2
    loaders want ``.pt2``); moved onto the temporary file on success, removed on failure."""
    work = tmp.with_name(tmp.name + suffix)
    try:
        yield work
        os.replace(work, tmp)
    finally:
        with contextlib.suppress(OSError):
            work.unlink()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence torch's warnings and logs while exporting: the TorchScript deprecation notices
    (one warning of our own replaces them), the tracer's notes on Python values taken from
    sizes (the parity gate checks other batch sizes; value branches in f were refused
    before), and the exporters' progress logs."""
    names = ("torch.export", "torch._export", "torch._dynamo", "torch._inductor",
             "torch.fx.experimental.symbolic_shapes")
    with _quiet_logs(names), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _translated(exporter: str) -> Iterator[None]:
    """Exporter failures as named errors: Python control flow on data, or :class:`ExportError`."""
    try:
        yield
    except (OdeserveError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - the exporters raise many types; all become ExportError
        text = "\n".join(f"{type(x).__name__}: {x}" for x in _chain(e))
        if any(k in text for k in _DATA_DEPENDENT):
            where = user_frame(e)
            raise DataDependentControlFlowError(
                f"{exporter} cannot capture the solve: f (or a plugin) uses Python control flow on a tensor's value"
                + (f" at {where}" if where else "")
                + ". Use torch.where / tensor arithmetic instead of Python if/while/float()/item() on tensors"
            ) from e
        if "Cannot insert a Tensor that requires grad as a constant" in text:
            raise ExportError(
                f"{exporter} cannot write a tensor that requires grad into the file as a constant: f captures one "
                "(e.g. a lambda or closure over a model's parameters). Pass the nn.Module itself (forward(t, y)), "
                "whose parameters the file keeps, or freeze the captured tensors first (requires_grad_(False))"
            ) from e
        raise ExportError(f"{exporter} failed: {type(e).__name__}: {str(e).strip()[:2000]}") from e


@contextlib.contextmanager
def _progress(label: str, enabled: bool) -> Iterator[None]:
    """Elapsed time on stderr while a long step runs: a line rewritten every second on a
    terminal, else a line at the start, every 30 s and at the end."""
    if not enabled:
        yield
        return
    tty = sys.stderr.isatty()
    start = time.perf_counter()
    stop = threading.Event()

    def show() -> None:
        while not stop.wait(1.0 if tty else 30.0):
            elapsed = time.perf_counter() - start
            print(f"\rodeserve: {label} … {elapsed:.0f} s" if tty else f"odeserve: {label} … {elapsed:.0f} s",
                  end="" if tty else "\n", file=sys.stderr, flush=True)

    print(f"odeserve: {label} …", end="" if tty else "\n", file=sys.stderr, flush=True)
    thread = threading.Thread(target=show, daemon=True)
    thread.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        stop.set()
        thread.join()
        print(f"{chr(13) if tty else ''}odeserve: {label}: {'done' if ok else 'failed'} in "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
