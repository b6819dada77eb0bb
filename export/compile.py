"""Compiled solves: :class:`ODEModule` (``f`` and the solve settings as one ``nn.Module``)
and :func:`compile_solve` (its solve under ``torch.compile(fullgraph=True)``).

Everything that cannot live in a graph happens once, eagerly, before the compiled region:
plugin lookup, input validation, the check call of ``f`` (:func:`odeserve._api.prepare`),
cached per dtype, device and state layout.  The graph then holds odeserve's
``loop="while"`` solve: one ``torch.while_loop`` over the solver's ``step`` and the loop's
``adaptive_step``, per-sample ``torch.where`` masks, no host read inside the loop — the same
functions the eager Python loop calls, so compiled and eager share one implementation of
the maths.  The status is a tensor carried by the loop; the eager code around the graph
reads it once, after the loop (``throw=True`` raises :class:`odeserve.SolveFailedError`).

One prepared solve serves every batch size: the flat layout reads the batch from the tensor
it is given (:class:`_BatchFreeSpec`), so marking axis 0 dynamic gives one graph for batch
sizes ≥ 2 (PyTorch specialises size 1: batch 1 gets its own graph).  Inductor's CPU code
generation adds one more split in ``joint`` mode: a float32 sum over more than 4096
elements (the error norm over batch × state) uses a chunked accumulator, so batches on
either side of batch × D = 4096 get one graph each.

Training (``sensitivity="autograd"``) compiles forward and backward through
``torch.while_loop``'s autograd.  The other sensitivities do not compile for training: they
are ``autograd.Function`` s that drive their own backward loop, and Dynamo rejects them
("An intermediate tensor 'status' created inside a higher-order op subgraph aliases an
input or output ..."); :class:`CompiledODE` refuses such a call with
:class:`~odeserve.InvalidOptionError` before compiling (inference, under ``torch.no_grad()``,
runs the plain solve and compiles), and refuses ``"forward"`` when it is built (its
``autograd.Function`` defines a custom ``jvp``, which Dynamo cannot trace at all).  Use them
eagerly (``odeserve.solve``, or the module itself).
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from odeserve._api import PreparedSolve, make_rhs, prepare
from odeserve._loop import adaptive_init
from odeserve._state import StateSpec
from odeserve.errors import InvalidOptionError, SolveFailedError
from odeserve.plugins.sensitivities._common import differentiated_params
from odeserve.registry import get_registry
from odeserve.solution import Solution

from ._tanh import fast_tanh_decompositions

__all__ = ["ODEModule", "CompiledODE", "SolveInfo", "compile_solve"]

State = Tensor | tuple[Tensor, ...]


class SolveInfo(NamedTuple):
    """Outcome of a solve as tensors (what a graph can return).  Per-sample fields are
    ``(batch,)`` in ``per_sample`` mode and 0-d in ``joint`` mode; ``nfe`` (batched f
    evaluations) is always 0-d."""

    status: Tensor
    accepted: Tensor
    rejected: Tensor
    nfe: Tensor
    t_final: Tensor


class _BatchFreeSpec(StateSpec):
    """A :class:`StateSpec` whose maps take the batch size (axis 0) from the tensors they
    are given instead of the example they were built from, so one prepared solve (and one
    graph) serves every batch size.  In ``joint`` mode axis 0 is a batch only when every
    component has it with one size; otherwise the layout is the parent's, fixed."""

    def __init__(self, y0: Tensor | Sequence[Tensor], per_sample: bool) -> None:
        super().__init__(y0, per_sample)
        comps = tuple(y0) if self.is_tuple else (y0,)
        self.batch_axis = _has_batch_axis(comps, per_sample)
        self.row_tails = [tuple(c.shape[1:]) for c in comps] if self.batch_axis else []
        self.row_sizes = [math.prod(tail) for tail in self.row_tails]
        self.row_width = sum(self.row_sizes)
        if self.batch_axis and not per_sample:
            # The whole-state shapes and width with the batch left open (-1), for code that
            # reshapes with them directly (make_rhs's single-tensor joint path).
            self.shapes = [(-1,) + tail for tail in self.row_tails]
            self.width = -1

    def flatten(self, y: Tensor | Sequence[Tensor], rows: int | None = None) -> Tensor:
        if not self.batch_axis:
            return super().flatten(y, rows)
        comps = tuple(y) if self.is_tuple else (y,)
        if not self.per_sample:
            rows = 1
        elif rows is None:
            rows = comps[0].shape[0]
        parts = [c.reshape(rows, -1) for c in comps]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def unflatten(self, flat: Tensor) -> Tensor | tuple[Tensor, ...]:
        if not self.batch_axis or self.per_sample:
            return super().unflatten(flat)
        lead = tuple(flat.shape[:-2])
        batch = flat.shape[-1] // self.row_width
        if not self.is_tuple:
            return flat.reshape(lead + (batch,) + self.row_tails[0])
        parts = torch.split(flat, [batch * n for n in self.row_sizes], dim=-1)
        return tuple(p.reshape(lead + (batch,) + tail) for p, tail in zip(parts, self.row_tails))

    def batch_components(self, y0: State) -> tuple[Tensor, ...]:
        """The components whose axis 0 is the batch (to mark dynamic)."""
        if not self.batch_axis:
            return ()
        return tuple(y0) if self.is_tuple else (y0,)


def _has_batch_axis(comps: tuple[Tensor, ...], per_sample: bool) -> bool:
    """Axis 0 is a batch: always per sample; in joint mode when every component has it,
    with one size.  Compared pairwise, not through a set: hashing a symbolic size would
    specialise it."""
    if per_sample:
        return True
    return all(c.ndim >= 1 for c in comps) and all(c.shape[0] == comps[0].shape[0] for c in comps[1:])


def _layout_key(y0: State, per_sample: bool) -> tuple[Any, ...]:
    """What a prepared solve depends on besides the batch size."""
    comps = tuple(y0) if isinstance(y0, (tuple, list)) else (y0,)
    first = comps[0]
    batched = _has_batch_axis(comps, per_sample)
    shapes = tuple(tuple(c.shape[1:]) if batched else tuple(c.shape) for c in comps)
    return (str(first.dtype), str(first.device), isinstance(y0, (tuple, list)), batched, shapes)


class ODEModule(nn.Module):
    """``forward(y0)`` solves ``dy/dt = f(t, y)`` from ``y0`` at ``t[0]`` and returns the
    solution at every ``t`` (``(len(t), *y0.shape)``; a tuple for tuple states) — and, with
    ``return_info=True``, a :class:`SolveInfo` too.

    ``f`` is a registered submodule (its parameters are this module's parameters).  The
    arguments are those of :func:`odeserve.solve`; ``t`` is the output times, or give
    ``t0``/``t1`` for the end point only.  ``loop="auto"`` (default) runs the solve as one
    ``torch.while_loop`` under ``torch.compile`` (which compiles it whole, ``fullgraph=True``)
    and as odeserve's eager Python loop otherwise — the same step function either way;
    ``"while"`` uses the while_loop eagerly too; ``"python"`` unrolls a fixed-step solve
    under compile (small step counts only; adaptive solvers cannot compile that way).

    Plugins are resolved and inputs checked eagerly on the first call per dtype, device and
    state layout (:meth:`prepare`); that must happen outside any compiled region, so call
    the module (or :meth:`prepare`) once before ``torch.compile`` — or use
    :func:`compile_solve`, which does it for you.  ``throw=True`` raises
    :class:`odeserve.SolveFailedError` when a sample failed; the check reads the status
    once after the loop, and only in eager code (under a plain ``torch.compile`` of this
    module use ``return_info=True`` and check ``info.status`` yourself).

    Training: gradients reach ``y0``, the parameters of ``f`` (an ``nn.Module``) and any
    other tensor requiring grad that ``f`` reads (a closure over a weight) through the
    while loop (see :meth:`_grad_anchor`).
    """

    def __init__(
        self,
        f: Callable[..., Any],
        *,
        t: Any = None,
        t0: float = 0.0,
        t1: float = 1.0,
        solver: str = "dopri5",
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
        return_info: bool = False,
        loop: str = "auto",
    ) -> None:
        super().__init__()
        if loop not in ("auto", "while", "python"):
            raise InvalidOptionError(f"loop must be 'auto', 'while' or 'python', got {loop!r}")
        self.f = f
        registry = get_registry()
        solver_cls = registry.solver(solver)
        if loop == "python" and solver_cls.adaptive:
            raise InvalidOptionError(
                f"solver {solver!r} is adaptive: its Python loop stops on a host read each step and "
                "cannot compile whole; use loop='auto' or 'while'"
            )
        self.sensitivity = registry.sensitivity(sensitivity)(**(sensitivity_options or {}))
        times = t if t is not None else [t0, t1]
        self._times = times.detach().clone() if isinstance(times, Tensor) else list(times)
        self._options: dict[str, Any] = dict(
            solver=solver, rtol=rtol, atol=atol, dt=dt, steps=steps, dt0=dt0, controller=controller,
            controller_options=controller_options, batch=batch, max_steps=max_steps, dt_min=dt_min,
            dt_max=dt_max, loop="python" if loop == "python" else "while",
        )
        self.loop = loop
        self.per_sample = batch == "per_sample"
        self.throw = throw
        self.return_info = return_info
        # Per layout: the prepared solve, and its eager (Python-loop) twin for loop="auto".
        self._prepared: dict[tuple[Any, ...], tuple[PreparedSolve, PreparedSolve]] = {}

    # ---------------------------------------------------------------- eager, outside graphs

    def prepare(self, y0: State) -> PreparedSolve:
        """The prepared solve for ``y0``'s dtype, device and layout (made once, then cached).
        Validates the inputs and calls ``f`` once, so it runs eagerly."""
        return self._lookup(y0)[0]

    def _lookup(self, y0: State) -> tuple[PreparedSolve, PreparedSolve]:
        key = _layout_key(y0, self.per_sample)
        found = self._prepared.get(key)
        if found is not None:
            return found
        if torch.compiler.is_compiling():
            raise InvalidOptionError(
                "ODEModule meets a new dtype, device or state layout inside torch.compile: the solve "
                "must be prepared eagerly first; call the module (or module.prepare(y0)) once before "
                "compiling, or use odeserve.export.compile_solve"
            )
        y0 = tuple(y0) if isinstance(y0, (tuple, list)) else y0
        with torch.no_grad():
            p = prepare(self.f, y0, self._times, **self._options)
            spec = _BatchFreeSpec(y0, self.per_sample)
            problem = dataclasses.replace(p.problem, rhs=make_rhs(self.f, spec))
            prepared = dataclasses.replace(p, spec=spec, problem=problem)
            if prepared.adaptive:
                # The loop's start fills lazily made constant caches; filled here, a graph
                # never traces the cache miss (which would recompile once they are filled).
                adaptive_init(problem, spec.flatten(y0))
        found = self._prepared[key] = (prepared, dataclasses.replace(prepared, loop="python"))
        return found

    # ---------------------------------------------------------------- traceable

    def solve(self, y0: State) -> tuple[State, SolveInfo]:
        """The solve without the status check: what compiles (no host read, no branch on data)."""
        compiled_loop, eager_loop = self._lookup(y0)
        p = eager_loop if self.loop == "auto" and not torch.compiler.is_compiling() else compiled_loop
        P = p.problem
        y0_flat = p.spec.flatten(y0)
        if p.loop == "while" and torch.is_grad_enabled() and not y0_flat.requires_grad:
            y0_flat = y0_flat + self._grad_anchor(p, y0_flat)
        ys, res = self.sensitivity.run(p, y0_flat)
        # Outputs past the point where a sample stopped are NaN, as in odeserve.solve.
        beyond = (p.t.reshape(-1, 1, 1) - res.t) * P.direction > 0
        ys = torch.where(beyond, torch.full_like(ys, float("nan")), ys)
        shape: Callable[[Tensor], Tensor] = (lambda x: x.reshape(-1)) if P.per_sample else (lambda x: x.reshape(()))
        nfe = res.batched_calls
        if not isinstance(nfe, Tensor):
            nfe = torch.full((), nfe, dtype=torch.int64, device=res.status.device)
        info = SolveInfo(shape(res.status), shape(res.accepted), shape(res.rejected), nfe.reshape(()), shape(res.t))
        return p.spec.unflatten(ys), info

    def _grad_anchor(self, p: PreparedSolve, like: Tensor) -> Tensor:
        """A zero that requires grad when something ``f`` reads does.  torch.while_loop (2.13)
        back-propagates only through carries whose initial value requires grad: without
        this, a ``y0`` that needs no gradient (data) would cut the gradient of ``f``'s
        parameters through the loop, silently.  Adding an exact zero links the state to
        them.  An ``f`` with no trainable parameter of its own may still read a tensor that
        requires grad (a closure over a weight): then the zero comes from one evaluation of
        ``f`` at ``t0`` (NaN and Inf mapped to 0 first, so the zero stays exact), and stays
        a plain zero when that output needs no gradient."""
        zero = torch.zeros((), dtype=like.dtype, device=like.device)
        params = differentiated_params(self.f, None)
        for q in params:
            zero = zero + q.reshape(-1)[:1].sum().to(like.dtype) * 0
        if not params:
            v = p.problem.rhs(p.problem.t0, like).reshape(-1)[:1]
            if v.requires_grad:
                zero = zero + torch.nan_to_num(v, 0.0, 0.0, 0.0).sum() * 0
        return zero

    def reads_grad(self, y0: State) -> bool:
        """Whether a solve from ``y0`` in grad mode has anything to differentiate: ``y0`` or
        a parameter of ``f`` requires grad, or ``f`` reads another tensor that does (one
        eager evaluation of ``f`` at ``t0`` tells, only when the first two say no)."""
        comps = tuple(y0) if isinstance(y0, (tuple, list)) else (y0,)
        if any(c.requires_grad for c in comps) or differentiated_params(self.f, None):
            return True
        p = self.prepare(y0)
        with torch.enable_grad():
            return bool(p.problem.rhs(p.problem.t0, p.spec.flatten(y0)).requires_grad)

    def check(self, y0: State, ys: State, info: SolveInfo) -> None:
        """Raise :class:`odeserve.SolveFailedError` (the partial solution attached) unless
        every sample succeeded: one host read of the status, after the loop."""
        if bool((info.status == 0).all()):
            return
        p = self.prepare(y0)
        stats = {"nfe": int(info.nfe), "steps": info.accepted + info.rejected, "accepted": info.accepted,
                 "rejected": info.rejected, "t_final": info.t_final}
        sol = Solution(ts=p.t, ys=ys, status=info.status, stats=stats, solver=p.solver_name,
                       batch="per_sample" if self.per_sample else "joint")
        raise SolveFailedError(f"solve with {sol.solver!r} failed: {sol.describe_failure()}", sol)

    def forward(self, y0: State) -> State | tuple[State, SolveInfo]:
        ys, info = self.solve(y0)
        if self.throw and not torch.compiler.is_compiling():
            self.check(y0, ys, info)
        return (ys, info) if self.return_info else ys

    def extra_repr(self) -> str:
        opts = {k: v for k, v in self._options.items() if v is not None}
        return ", ".join(f"{k}={v!r}" for k, v in opts.items())


def _private_code(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` bound to a private copy of its code object.  Dynamo keeps compiled graphs,
    and its recompile limit (8 by default), per code object: without the copy every
    compiled ODE model in a process would share the slots of ``ODEModule.solve``, and the
    ninth graph (e.g. the fifth model, at two graphs each) would fail under fullgraph."""
    func = method.__func__  # type: ignore[attr-defined]
    clone = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__, func.__defaults__,
                               func.__closure__)
    clone.__kwdefaults__ = func.__kwdefaults__
    clone.__qualname__ = func.__qualname__
    return types.MethodType(clone, method.__self__)  # type: ignore[attr-defined]


def _inference_options() -> dict[str, Any]:
    """Inductor options of the inference graph under ``cpp_wrapper=True`` (no ``mode`` or
    ``options`` given): the C++ wrapper, and ``decompose_mm_pass``, which turns a matrix
    product whose first dimension is statically 1 (the batch-1 graph: PyTorch specialises
    size 1) into Inductor's own fused multiply-and-sum code instead of an ATen ``addmm``
    call per layer — on CPU only for operands up to 2048 wide.  At batch 1 on this CPU that
    is 1.5–1.7× (dopri5, MLP 2/64) and 1.6–1.7× (RK4, MLP 64/256) faster than the C++
    wrapper alone (bench/results/latency.md); graphs for other batch sizes are unchanged (a
    symbolic batch is not statically 1).  A fresh dict per call: torch.compile keeps what it
    gets."""
    return {"cpp_wrapper": True, **kernel_options()}


def inductor_backend(config_patches: dict[str, Any], *, fast_tanh: bool) -> Callable[..., Any]:
    """A ``torch.compile`` backend: Inductor with ``config_patches`` and, with ``fast_tanh``,
    its decompositions plus :func:`odeserve.export._tanh.rational_tanh` for ``aten.tanh``."""
    from torch._inductor.compile_fx import compile_fx
    from torch._inductor.decomposition import select_decomp_table

    def backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Any:
        decompositions = {**select_decomp_table(), **fast_tanh_decompositions()} if fast_tanh else None
        return compile_fx(gm, example_inputs, config_patches=config_patches, decompositions=decompositions)

    return backend


def check_threads(threads: int | None) -> int | None:
    """Validate a ``threads`` option (``compile_solve``, ``to_aoti``): ``None`` or an int ≥ 1.

    It sets Inductor's ``cpp.threads``, the thread count its C++ kernels are written for:
    above 1 every kernel loop worth splitting becomes an OpenMP parallel region, whatever
    thread count the code later runs with, and libgomp wakes the team with a futex system
    call at every region's barriers even for a team of one.  For a single sample that is
    most of the work: a batch-1 dopri5 AOTI package (MLP 2/64) written for this machine's 2
    threads took 1.4× (``bench/bench_latency.py --aoti --threads-study``) to 1.8× (two
    packages alternated in one process) the time of one written for 1, both run
    single-threaded; an RK4 package of the 64/256 MLP 1.13×."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise InvalidOptionError(f"threads must be None or an int >= 1, got {threads!r}")
    return threads


def thread_options(threads: int | None) -> dict[str, Any]:
    """Inductor settings for kernels written for ``threads`` threads (``None``: Inductor's
    default, the process's thread count at compile time)."""
    return {"cpp.threads": threads} if threads is not None else {}


def kernel_options() -> dict[str, Any]:
    """Inductor settings for every build odeserve makes (``compile_solve``'s inference
    graphs, ``to_aoti``): ``decompose_mm_pass`` (see :func:`_inference_options`) and
    fused multiply-adds in the generated C++ kernels (``-ffp-contract=fast``: ``a * b + c``
    as one FMA instruction with one rounding instead of two; Inductor compiles with ``off``).
    The rational ``tanh``'s Horner polynomials, the stage sums and the batch-1 row blocks
    are chains of multiply-adds: measured with AOTInductor packages built both ways and
    alternated in one process, dopri5 at batch 512 (MLP 64/256, joint, I controller) took
    ×0.955–0.98 the time, RK4 100 steps at batch 1 ×0.96."""
    return {"post_grad_fusion_options": {"decompose_mm_pass": {}}, "cpp.enable_floating_point_contract_flag": "fast"}


#: Built-in sensitivities whose backward pass is an autograd.Function loop Dynamo cannot trace.
_EAGER_ONLY_TRAINING = ("adjoint", "checkpoint", "reversible")


class CompiledODE(nn.Module):
    """An :class:`ODEModule` whose solve runs as one compiled graph.  ``forward`` prepares
    eagerly (a cached lookup after the first call), marks the batch axis dynamic, runs the
    graph, then checks the status once.  ``module`` is the eager :class:`ODEModule` (same
    parameters).

    Two compiled callables, each compiled on first use: ``compiled`` for calls that need
    gradients (grad mode on and ``y0`` or a parameter of ``f`` requiring grad) and
    ``compiled_inference`` for the rest.  With ``cpp_wrapper=True`` (and the Inductor
    backend, no ``mode``/``options`` given) the inference graph uses Inductor's C++
    wrapper, which runs the while loop in C++ instead of Python: 1.6–1.8× faster per solve
    at batch 1 on CPU here, for ~30 s more compile.  The same default turns on Inductor's
    ``decompose_mm_pass`` (see ``_inference_options``), another 1.5–1.7× at batch 1.
    Training graphs cannot use the C++ wrapper (Inductor 2.13: "NYI cpp wrapper for
    while_loop_stack_output", the loop that saves the forward states for the backward
    pass).  ``fast_tanh`` (with the same default inference options): float32 ``tanh`` in the
    inference graph as XLA's rational approximation (:mod:`odeserve.export._tanh`; ≤ 3.1
    float32 eps, 1.1–1.2× faster at batch 1); training graphs keep ``torch.tanh``.

    ``threads`` (same default inference options): the thread count Inductor writes the
    inference graphs' C++ kernels for (its ``cpp.threads``; ``k`` > 1: OpenMP regions of
    ``k`` threads).  ``None`` (default): one thread — serial code — for a single sample (a
    batch of 1, or no batch axis), where every OpenMP region's barriers cost more than the
    split saves (see :func:`check_threads`), and Inductor's default (the process's
    ``torch.get_num_threads()`` at compile time) for other batches."""

    def __init__(
        self,
        module: ODEModule,
        *,
        dynamic: bool = True,
        backend: str | Callable[..., Any] = "inductor",
        mode: str | None = None,
        options: dict[str, Any] | None = None,
        cpp_wrapper: bool = True,
        fast_tanh: bool = True,
        threads: int | None = None,
    ) -> None:
        super().__init__()
        if getattr(module.sensitivity, "name", None) == "forward":
            raise InvalidOptionError(
                "sensitivity='forward' does not compile (Dynamo cannot trace an autograd.Function with a custom jvp); "
                "use odeserve.solve(..., sensitivity='forward') or odeserve.jvp eagerly, or compile with "
                "sensitivity='autograd'"
            )
        self.module = module
        self.dynamic = dynamic
        check_threads(threads)
        kw: dict[str, Any] = dict(fullgraph=True, dynamic=None if dynamic else False, mode=mode)
        inference: dict[str, Any] = dict(backend=backend, options=options)
        single: dict[str, Any] | None = None  # the one-sample inference graph, when it differs
        if cpp_wrapper and backend == "inductor" and mode is None and options is None:
            inference = dict(backend=inductor_backend({**_inference_options(), **thread_options(threads)},
                                                      fast_tanh=fast_tanh))
            if threads is None:
                single = dict(backend=inductor_backend({**_inference_options(), **thread_options(1)},
                                                   fast_tanh=fast_tanh))
        # Not submodule attributes: the compiled callables must not duplicate the parameters.
        self.__dict__["compiled"] = torch.compile(_private_code(module.solve), backend=backend, options=options, **kw)
        self.__dict__["compiled_inference"] = torch.compile(_private_code(module.solve), **inference, **kw)
        self.__dict__["compiled_single"] = (
            torch.compile(_private_code(module.solve), **single, **kw) if single is not None else None
        )

    def _inference_graph(self, y0: State, batch_comps: tuple[Tensor, ...]) -> Callable[..., Any]:
        """``compiled_single`` for one sample (a batch axis of 1, or no batch axis), when
        there is one; ``compiled_inference`` for the rest."""
        one = not batch_comps or batch_comps[0].shape[0] == 1
        return self.compiled_single if one and self.compiled_single is not None else self.compiled_inference

    def forward(self, y0: State) -> State | tuple[State, SolveInfo]:
        m = self.module
        p = m.prepare(y0)
        batch_comps = p.spec.batch_components(y0)  # type: ignore[attr-defined]
        if self.dynamic:
            for c in batch_comps:
                torch._dynamo.maybe_mark_dynamic(c, 0)
        needs_grad = torch.is_grad_enabled() and m.reads_grad(y0)
        if needs_grad and getattr(m.sensitivity, "name", None) in _EAGER_ONLY_TRAINING:
            raise InvalidOptionError(
                f"sensitivity={m.sensitivity.name!r} does not compile for training (its backward is a loop of its "
                "own, which Dynamo cannot trace); compile with sensitivity='autograd' (the same gradient to "
                "rounding for 'checkpoint' and 'reversible'), or train with the eager module "
                "(odeserve.export.ODEModule) or odeserve.solve; inference under torch.no_grad() compiles"
            )
        if needs_grad:
            ys, info = self.compiled(y0)
        else:
            # No gradient is wanted (a frozen model, or data only): the inference graph runs
            # under no_grad.  In grad mode the solve would mark y0 as requiring grad for
            # while_loop's backward, an output Dynamo refuses to return from a graph without
            # autograd ("returning intermediate with requires_grad_()").
            with torch.no_grad():
                ys, info = self._inference_graph(y0, batch_comps)(y0)
        if m.throw:
            m.check(y0, ys, info)
        return (ys, info) if m.return_info else ys


def compile_solve(
    f: Callable[..., Any],
    *,
    dynamic: bool = True,
    backend: str | Callable[..., Any] = "inductor",
    mode: str | None = None,
    options: dict[str, Any] | None = None,
    cpp_wrapper: bool = True,
    fast_tanh: bool = True,
    threads: int | None = None,
    **solve_options: Any,
) -> CompiledODE:
    """A compiled solver for ``f``: ``compile_solve(f, solver="rk4", t0=0, t1=1, steps=100)(y0)``.

    ``solve_options`` are :class:`ODEModule`'s (``t`` or ``t0``/``t1``, ``solver``,
    ``steps``/``dt`` or ``rtol``/``atol``, ``batch``, ``return_info``, ``throw``, ...).  The
    whole solve is one ``torch.compile(fullgraph=True)`` graph, compiled on the first call;
    ``dynamic=True`` (default) makes the batch axis symbolic so new batch sizes reuse it
    (batch 1 gets its own graph: PyTorch specialises size 1), and changing only the values
    of ``y0`` never recompiles.  ``backend``, ``mode`` and ``options`` go to
    ``torch.compile``; ``cpp_wrapper``, ``fast_tanh`` and ``threads``: see :class:`CompiledODE`.
    """
    module = ODEModule(f, **solve_options)
    return CompiledODE(module, dynamic=dynamic, backend=backend, mode=mode, options=options, cpp_wrapper=cpp_wrapper,
                       fast_tanh=fast_tanh, threads=threads)
