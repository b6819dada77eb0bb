"""How a prepared solve becomes an ONNX graph: the traced module, the two exporters, and the
translation of exporter failures into named errors that say what to change.

* :class:`SolveGraph` — ``forward(*states, [t0, t1 | t])`` runs the prepared solve with the
  batch taken from its input (and, with time inputs, the span substituted into the resolved
  problem), returning the states, ``status`` and, for adaptive solvers, ``n_steps``.
* :func:`check_no_value_branches` — one symbolic trace of ``f`` alone that refuses Python
  control flow on tensor values (with the line of f) before the slow export starts.
* :func:`export_dynamo` (``mode="loop"``: ``torch.while_loop`` → one ONNX ``Loop``) and
  :func:`export_legacy` (``mode="unrolled"``: the TorchScript tracer).
* :func:`translated_errors` — unsupported ops (named), data-dependent Python control flow,
  anything else as :class:`ExportError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import traceback
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from odeserve._api import PreparedSolve, make_rhs
from odeserve._loop import FixedGrid
from odeserve.errors import InvalidOptionError
from odeserve.solver import Const

from ._artifact import METADATA_PREFIX, DataDependentControlFlowError, ExportError, UnsupportedOpError, stringify

__all__ = [
    "SolveGraph",
    "ChunkGraph",
    "traceable_rhs",
    "grid_plan",
    "translated_errors",
    "check_no_value_branches",
    "locate_op",
    "export_dynamo",
    "export_legacy",
    "optimize_safely",
    "strip_metadata",
    "set_metadata",
]


class SolveGraph(nn.Module):
    """``forward(*states, [t0, t1 | t])`` → ``(*state outputs, status[, n_steps])``: the
    prepared solve with the batch taken from the input, and the time span (if dynamic)
    substituted into the resolved problem."""

    def __init__(self, f: Any, prepared: PreparedSolve, *, time_inputs: str | None, final_only: bool,
                 grid_index: Tensor | None, grid_frac: Tensor | None) -> None:
        super().__init__()
        if isinstance(f, nn.Module):
            self.f = f  # registers the weights, which the exporter stores in the file
        self.__dict__["fn"] = f
        self.__dict__["prepared"] = prepared
        self.n_states = len(prepared.spec.shapes)
        self.time_inputs = time_inputs
        self.final_only = final_only
        self.__dict__["grid_index"] = grid_index
        self.__dict__["grid_frac"] = grid_frac

    def _start(self, states: Sequence[Tensor]) -> tuple[int, Tensor, Any]:
        """The batch size, the flat ``(rows, D)`` state and the problem with the traced f."""
        spec = self.prepared.spec
        rows = states[0].shape[0]
        y = spec.flatten(states if spec.is_tuple else states[0], rows)
        return rows, y, dataclasses.replace(self.prepared.problem, rhs=traceable_rhs(self.fn, spec, y.new_ones(rows)))

    def _outputs(self, y: Tensor, rows: int) -> tuple[list[Tensor], Callable[[Tensor], Tensor]]:
        """The user's state components from flat ``y``, and how a per-row output is shaped:
        ``(batch,)`` in both modes (a joint solve's one value repeated for every sample)."""
        spec = self.prepared.spec
        out = spec.unflatten(y)
        per_row: Callable[[Tensor], Tensor] = (lambda x: x.reshape(-1)) if spec.per_sample else \
            (lambda x: x.reshape(-1).expand(rows))
        return (list(out) if spec.is_tuple else [out]), per_row

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        p = self.prepared
        states, rest = inputs[: self.n_states], inputs[self.n_states:]
        rows, y, P = self._start(states)
        times = p.t
        if self.time_inputs is not None:
            times = torch.stack([rest[0].reshape(()), rest[1].reshape(())]) if self.time_inputs == "span" else rest[0]
            # Copies, not views: the loop body may not capture aliasing tensors.
            P = dataclasses.replace(P, t0=times[0].clone(), t1=times[-1].clone(), t_interior=times[1:-1].clone())
            grid = p.grid
            if grid is not None:
                # Same per-interval step counts as the example's grid, on the given times.
                assert self.grid_index is not None and self.grid_frac is not None
                a = times.index_select(0, self.grid_index)
                b = times.index_select(0, self.grid_index + 1)
                grid = FixedGrid(torch.cat([a + (b - a) * self.grid_frac, times[-1:]]), grid.slot)
            p = dataclasses.replace(p, grid=grid)
        p = dataclasses.replace(p, problem=P)
        ys, res = p.run(y)
        if p.adaptive:
            # Outputs past the time a failed sample reached are NaN, as in odeserve.solve.
            beyond = (times.reshape(-1, 1, 1) - res.t.reshape(1, -1, 1)) * p.problem.direction > 0
            ys = torch.where(beyond, torch.full_like(ys, float("nan")), ys)
        outs, per_row = self._outputs(ys[-1] if self.final_only else ys, rows)
        outs.append(per_row(res.status))
        if p.adaptive:
            outs.append(per_row(res.accepted + res.rejected))
        return tuple(outs)


class ChunkGraph(SolveGraph):
    """``forward(*states, i)`` → ``(*states after `count` steps, i + count, status)``: the
    prepared fixed-step solve ``count`` steps at a time, from step ``i``, as straight-line
    code (an AOTInductor package's ``chunk`` model; :func:`odeserve._loop.fixed_unrolled`).
    Only for solves whose loop state is the state itself (no augmented solver state), with
    the final state as the only output and the times fixed."""

    def __init__(self, f: Any, prepared: PreparedSolve, count: int) -> None:
        super().__init__(f, prepared, time_inputs=None, final_only=True, grid_index=None, grid_frac=None)
        self.count = count

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        from odeserve._api import _finite_status
        from odeserve._loop import fixed_unrolled

        grid = self.prepared.grid
        assert grid is not None
        states, i = inputs[: self.n_states], inputs[self.n_states]
        rows, y, P = self._start(states)
        y = fixed_unrolled(P, grid, y, i.reshape(()), self.count)
        outs, per_row = self._outputs(y, rows)
        return (*outs, i + self.count, per_row(_finite_status(P, y.unsqueeze(0))))


# --------------------------------------------------------------------------- errors


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__  # type: ignore[assignment]


def user_frame(e: BaseException) -> str:
    """The innermost frame outside torch/onnx and this package's export code: usually the
    line of ``f`` that caused the failure."""
    skip = ("/torch/", "/onnx", "/onnxscript/", "/export/onnx.py", "/export/_", "/contextlib.py", "/_loop.py",
            "/_api.py", "/plugins/", "/odeserve/solver.py", "/odeserve/_state.py")
    best = ""
    for exc in _chain(e):
        for fs in traceback.extract_tb(exc.__traceback__):
            if not any(s in fs.filename.replace("\\", "/") for s in skip):
                best = f"{fs.filename}:{fs.lineno} ({fs.line})" if fs.line else f"{fs.filename}:{fs.lineno}"
    return best


def locate_op(f: Any, example: Any, t0: Tensor, op: str) -> str:
    """Where ``f`` calls ``op`` (the exporters report the op, not the line): one eager call of
    f with a dispatch mode that records the Python stack at the op's first use."""
    from torch.utils._python_dispatch import TorchDispatchMode

    short = re.split(r"[:.]+", op)[-1]
    found: list[str] = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if not found and short in str(func.__name__).split(".")[0]:
                frames = [fs for fs in traceback.extract_stack()[:-1] if "/torch/" not in fs.filename]
                if frames:
                    fs = frames[-1]
                    found.append(f"{fs.filename}:{fs.lineno} ({fs.line})" if fs.line else f"{fs.filename}:{fs.lineno}")
            return func(*args, **(kwargs or {}))

    rows = (example[0] if isinstance(example, (tuple, list)) else example).shape[0]
    try:
        with torch.no_grad(), Spy():
            f(t0.reshape(1).expand(rows), example)
    except Exception:  # noqa: BLE001 - locating is a courtesy; the original error stands
        return ""
    return found[0] if found else ""


_OP_PATTERNS = (
    re.compile(r"No ONNX function found for <OpOverload\(op='([\w.:]+)'"),
    re.compile(r"Exporting the operator '([\w:.]+)' to ONNX opset version \d+ is not supported"),
    re.compile(r"Unsupported FX nodes: \{'call_function': \['([\w.:]+)'"),
    re.compile(r"No decompositions registered for ([\w.:]+)"),
)
_DATA_DEPENDENT = (
    "data-dependent", "Data-dependent", "Could not guard on", "GuardOnDataDependentSymNode",
    "DataDependentOutputException", "Converting a tensor to a Python", "Dynamic control flow is not supported",
)


def check_no_value_branches(f: Any, example: Any, t0: Tensor) -> None:
    """Refuse ``f`` if it takes a Python value (``if``, ``float()``, ``.item()``, ...) from a
    tensor's *values*: one symbolic trace of ``f`` alone (fast), where sizes are symbols and
    values are unknown, so only a value-dependent step fails.  Branches on sizes are allowed
    (the parity gate checks other batch sizes)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    comps = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    rows = comps[0].shape[0]

    def call(t: Tensor, *ys: Tensor) -> Any:
        return f(t, ys if isinstance(example, (tuple, list)) else ys[0])

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make_fx(call, tracing_mode="symbolic")(t0.reshape(1).expand(rows).clone(), *comps)
    except Exception as e:  # noqa: BLE001 - only value branches are this check's business
        text = "\n".join(f"{type(x).__name__}: {x}" for x in _chain(e))
        if any(k in text for k in _DATA_DEPENDENT):
            where = user_frame(e)
            raise DataDependentControlFlowError(
                "f takes a Python value from a tensor's values (an if/while on data, float(), .item(), ...)"
                + (f" at {where}" if where else "")
                + "; a trace would freeze the branch taken for the example. "
                "Use torch.where / tensor arithmetic instead"
            ) from None


@contextlib.contextmanager
def translated_errors(exporter: str) -> Iterator[None]:
    """Exporter failures as named odeserve errors that say what to change."""
    try:
        yield
    except (ExportError, InvalidOptionError):
        raise
    except Exception as e:  # noqa: BLE001 - the exporters raise many types; re-raised below if unknown
        text = "\n".join(f"{type(x).__name__}: {x}" for x in _chain(e))
        for pat in _OP_PATTERNS:
            m = pat.search(text)
            if m:
                op = m.group(1)
                where = user_frame(e)
                raise UnsupportedOpError(
                    f"{'f' if where else 'the solve'} uses {op!r}, which the {exporter} ONNX exporter cannot express"
                    + (f" (called at {where})" if where else "")
                    + "; replace it with supported operations (or a polynomial/rational approximation)",
                    op,
                ) from e
        if any(k in text for k in _DATA_DEPENDENT):
            where = user_frame(e)
            first = next((ln.strip() for ln in text.splitlines() if any(k in ln for k in _DATA_DEPENDENT)), "")
            raise DataDependentControlFlowError(
                "the solve cannot be exported as one graph: f (or a plugin) uses Python control flow on a "
                f"tensor's value{' at ' + where if where else ''}. Exporter said: {first[:400]}. "
                "Use torch.where / tensor arithmetic instead of Python if/while/float()/item() on tensors"
            ) from e
        raise ExportError(f"the {exporter} ONNX exporter failed: {type(e).__name__}: {str(e).strip()[:2000]}") from e


# --------------------------------------------------------------------------- exporters


def export_dynamo(module: nn.Module, args: tuple[Tensor, ...], names: tuple[list[str], list[str]],
                   dynamic: Sequence[bool], opset: int) -> Any:
    batch = torch.export.Dim("batch")
    shapes = (tuple({0: batch} if d else None for d in dynamic),)  # forward(*inputs): one varargs entry
    # Const.as_tensors: coefficients stay tensors (initializers of the state's dtype); as
    # literal ops they would pass through float32 ONNX attributes.
    with translated_errors("dynamo"), warnings.catch_warnings(), _quiet_logs(), Const.as_tensors():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, args, dynamo=True, input_names=names[0], output_names=names[1], dynamic_shapes=shapes,
            opset_version=opset, external_data=False, verify=False, report=False, verbose=False,
            # Not the exporter's optimize=True: the onnxscript rewrite rules it runs match
            # constants with math.isclose (abs_tol=1e-8), so e.g. ``atol + rtol·|y|`` with
            # atol=1e-8 loses the atol term ("x + 0 → x").  optimize_safely runs the rest.
            optimize=False,
        )
    return optimize_safely(program.model_proto)


def optimize_safely(model: Any) -> Any:
    """The onnxscript optimizer's exact passes (constant folding, dead-node removal, common
    subexpressions, initializer deduplication) without its pattern rewriter, whose rules
    match constants only approximately.  About halves the nodes of a solve's loop body (the
    shape arithmetic of dynamic-batch reshapes folds away), which is most of the per-step
    cost at small batch.  If this onnxscript lacks the passes, the model is returned as is."""
    try:
        import onnx_ir.passes.common as common
        from onnxscript import ir
        from onnxscript.optimizer import _constant_folding as folding
    except ImportError:  # pragma: no cover - other onnxscript layouts
        return model
    ir_model = ir.serde.deserialize_model(model)
    passes = ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager(
            [folding.FoldConstantsPass(shape_inference=True,
                                       input_size_limit=folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                                       output_size_limit=folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT),
             common.RemoveUnusedNodesPass()],
            steps=2, early_stop=True,
        ),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )
    passes(ir_model)
    model = ir.serde.serialize_model(ir_model)
    _drop_multiply_by_one(model)
    return model


def _drop_multiply_by_one(model: Any) -> None:
    """Remove ``Mul(x, c)`` with ``c`` a 0-d constant exactly 1 (``torch.addcmul``'s default
    ``value=1`` becomes one such multiply per stage sum).  Exact comparison only; the output
    is renamed to ``x`` in its graph and nested subgraphs, unless it is a graph output."""
    from onnx import numpy_helper

    ones = {i.name for i in model.graph.initializer
            if not i.dims and numpy_helper.to_array(i).dtype.kind == "f" and float(numpy_helper.to_array(i)) == 1.0}

    def rename(graph: Any, old: str, new: str) -> None:
        for node in graph.node:
            node.input[:] = [new if i == old else i for i in node.input]
            for attr in node.attribute:
                if attr.HasField("g"):
                    rename(attr.g, old, new)

    def visit(graph: Any) -> None:
        outputs = {o.name for o in graph.output}
        keep = []
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g)
            if node.op_type == "Mul" and node.output[0] not in outputs and len(node.input) == 2:
                a, b = node.input
                other = b if a in ones else a if b in ones else None
                if other is not None:
                    rename(graph, node.output[0], other)
                    continue
            keep.append(node)
        del graph.node[:]
        graph.node.extend(keep)

    visit(model.graph)


@contextlib.contextmanager
def _quiet_logs(names: Sequence[str] = ("torch.onnx", "torch.export", "torch._export", "onnxscript")) -> Iterator[None]:
    """Loggers ``names`` at ERROR meanwhile: the exporters log progress (and the ONNX one
    skipped torchvision ops) at WARNING, which is not the user's news."""
    import logging

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


_DIFF_REGISTERED: set[int] = set()


def _register_diff(opset: int) -> None:
    """``aten::diff`` for the TorchScript exporter (the fixed-step loop takes the step sizes
    of a grid built from time inputs with it): first difference along one axis by two Slices."""
    if opset in _DIFF_REGISTERED:
        return
    from torch.onnx import symbolic_helper as sh

    def diff(g: Any, x: Any, n: Any, dim: Any, prepend: Any, append: Any) -> Any:
        if sh._get_const(n, "i", "n") != 1 or not sh._is_none(prepend) or not sh._is_none(append):
            raise UnsupportedOpError("torch.diff with n != 1, prepend or append has no ONNX export here", "aten::diff")
        axis = g.op("Constant", value_t=torch.tensor([sh._get_const(dim, "i", "dim")]))
        one = g.op("Constant", value_t=torch.tensor([1]))
        zero = g.op("Constant", value_t=torch.tensor([0]))
        last = g.op("Constant", value_t=torch.tensor([-1]))
        end = g.op("Constant", value_t=torch.tensor([2**62]))
        return g.op("Sub", g.op("Slice", x, one, end, axis), g.op("Slice", x, zero, last, axis))

    torch.onnx.register_custom_op_symbolic("aten::diff", diff, opset)
    _DIFF_REGISTERED.add(opset)


def export_legacy(module: nn.Module, args: tuple[Tensor, ...], names: tuple[list[str], list[str]],
                   axes: dict[str, dict[int, str]], opset: int) -> Any:
    import onnx

    _register_diff(opset)
    buf = io.BytesIO()
    with translated_errors("TorchScript"), warnings.catch_warnings():
        # The tracer warns on every Python bool taken from a traced size as well as from a
        # value; :func:`check_no_value_branches` has already refused value branches in f, and
        # the parity gate at other batch sizes catches a size branch that froze wrongly.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, buf, dynamo=False, input_names=names[0], output_names=names[1], dynamic_axes=axes,
            opset_version=opset, do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def strip_metadata(model: Any) -> None:
    """Drop per-node stack traces and doc strings (most of a dynamo file's bytes)."""

    def visit(graph: Any) -> None:
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.HasField("g"):
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    model.doc_string = ""
    visit(model.graph)


def set_metadata(model: Any, meta: dict[str, Any]) -> None:
    import onnx

    keep = [p for p in model.metadata_props if not p.key.startswith(METADATA_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in keep}, **stringify(meta)})


def traceable_rhs(f: Any, spec: Any, ones: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """The per-sample ``rhs(t, y_flat)`` of :func:`odeserve._api.make_rhs` without its Python
    branch on sizes, and lean, since every op here repeats per f evaluation inside the graph:
    no reshape where the state already is ``(rows, D)``, and a 0-d ``t`` (fixed-step loop)
    broadcast by one multiply with ``ones`` (``(rows,)``, made once outside the loop) instead
    of a shape computation and an expand.  ``t`` is 0-d or ``(rows, 1)`` (adaptive loop); its
    rank is static, so the branch below is too.

    A ``joint`` spec (``export_prepare(batch="joint")``: the whole batch is one row, its
    size read from the input) has no per-sample ``t`` to broadcast: its rhs is
    :func:`~odeserve._api.make_rhs`'s, which hands ``f`` the loop's ``t`` as the eager joint
    solve does."""
    if not spec.per_sample:
        return make_rhs(f, spec)
    flat = not spec.is_tuple and len(spec.tails[0]) == 1

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        tt = t * ones if t.ndim == 0 else t.reshape(ones.shape)
        if flat:
            return f(tt, y)
        return spec.flatten(f(tt, spec.unflatten(y)), y.shape[0])

    return rhs


def grid_plan(grid_times: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
    """For each grid step start: the output interval it lies in and its fraction of it, so
    the grid can be rebuilt from other output times with the same per-interval counts."""
    g, t = grid_times[:-1].double(), times.double()
    idx = torch.searchsorted(t, g, right=True) - 1 if bool(t[-1] > t[0]) else \
        (t.numel() - 1 - torch.searchsorted(t.flip(0), g, right=False))
    idx = idx.clamp(0, t.numel() - 2)
    counts = torch.bincount(idx, minlength=t.numel() - 1)
    first = torch.cumsum(counts, 0) - counts
    k = torch.arange(g.numel()) - first[idx]
    frac = k.double() / counts[idx].double()
    return idx.to(torch.int64), frac.to(times.dtype)
