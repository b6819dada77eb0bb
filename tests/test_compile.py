"""Compiled solves (``odeserve.export.compile_solve`` / ``ODEModule``): whole-solve
``torch.compile(fullgraph=True)`` for every registered solver, equal to the eager solve, one
graph for every batch size, and compiled training.

Compiling is slow on a small CPU, so most cases use the ``eager`` backend (Dynamo's
full-graph capture, run by the ATen ops it captured) or ``aot_eager`` (adds AOTAutograd:
functionalisation and the backward graph); one fixed and one adaptive case go through
Inductor's code generation.  The cases that take longest (Inductor, dopri5 training) are
marked ``slow``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from odeserve import SolveFailedError, Status, get_registry, solve
from odeserve.export import ODEModule, compile_solve

try:
    from .problems import TimeConcatMLP
except ImportError:
    from problems import TimeConcatMLP

SOLVERS = sorted(get_registry().entries("solver"))
T = [0.0, 0.3, 0.7, 1.0]  # interior output times: dense output / output slots are compiled too


def _adaptive(solver: str) -> bool:
    return get_registry().solver(solver).adaptive


def _options(solver: str) -> dict:
    return dict(rtol=1e-6, atol=1e-8) if _adaptive(solver) else dict(steps=8)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


class MLP(nn.Module):
    """A tiny time-dependent field; ``t`` is 0-d (joint) or ``(batch,)`` (per sample)."""

    def __init__(self, dim: int = 2, hidden: int = 8, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(dim + 1, hidden, dtype=dtype)
        self.l2 = nn.Linear(hidden, dim, dtype=dtype)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, 1).expand(y.shape[0], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([tt, y], dim=-1))))


class Split(nn.Module):
    """The same field on a tuple state ``(y[:, :1], y[:, 1:])``."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, t, y):
        d = self.f(t, torch.cat(y, dim=-1))
        return d[:, :1], d[:, 1:]


def _y0(batch: int, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _check_info(info, ref, solver: str, per_sample: bool) -> None:
    """Status and step counts equal the eager solve's.  ``nfe`` differs by design: the eager
    solve reuses ``f(t0, y0)`` from input validation (one evaluation fewer) and evaluates a
    solver's extra dense-output stages (dopri8: 3) only on steps where an output time falls,
    while the masked loop evaluates them every iteration."""
    assert torch.equal(info.status, ref.status)
    assert torch.equal(info.accepted, ref.stats["accepted"])
    assert torch.equal(info.rejected, ref.stats["rejected"])
    assert torch.allclose(info.t_final, ref.stats["t_final"].to(info.t_final.dtype), rtol=0, atol=1e-12)
    cls = get_registry().solver(solver)
    if not cls.adaptive:
        assert int(info.nfe) == int(ref.stats["nfe"])
        return
    iterations = int((info.accepted + info.rejected).max())
    interp = cls.interpolation_evals if len(T) > 2 else 0
    assert int(info.nfe) == 2 + (cls.evals_per_step + interp) * iterations
    if interp == 0:
        assert int(info.nfe) == int(ref.stats["nfe"]) + 1


def _graphs() -> int:
    """Graphs Dynamo captured.  Not the backend's call count: a float64 graph holding 0-d
    CPU constants is retraced once (TensorifyScalarRestartAnalysis) and handed to the
    backend twice, but it is one graph and one compilation."""
    return counters["stats"]["unique_graphs"]


def _close(a, b, tol: float) -> None:
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y, tol)
        return
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= tol, f"max |compiled - eager| = {err:.3g} > {tol:g}"


# --------------------------------------------------------------------------- every solver


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_compiles_to_one_graph_equal_to_eager(solver):
    """fullgraph=True (a graph break raises), exactly one graph, no graph break recorded, and
    the compiled solve equals the eager Python-loop solve to 1e-12 in float64."""
    batch = "per_sample" if _adaptive(solver) else "joint"
    f, y0 = MLP(), _y0(3)
    model = compile_solve(f, t=T, solver=solver, batch=batch, return_info=True, backend="eager", **_options(solver))
    with torch.no_grad():
        ys, info = model(y0)
        ref = solve(f, y0, T, solver=solver, batch=batch, compact=False, **_options(solver))
    assert _graphs() == 1
    assert not counters["graph_break"], dict(counters["graph_break"])
    _close(ys, ref.ys, 1e-12)
    _check_info(info, ref, solver, batch == "per_sample")


@pytest.mark.parametrize("solver,batch", [("rk4", "joint"), ("dopri5", "per_sample")])
def test_explain_reports_no_graph_break(solver, batch):
    module = ODEModule(MLP(), t=T, solver=solver, batch=batch, **_options(solver))
    y0 = _y0(3)
    module.prepare(y0)
    with torch.no_grad():
        explained = torch._dynamo.explain(module.solve)(y0)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


# --------------------------------------------------------------------------- batch size, values


@pytest.mark.parametrize(
    "solver,batch", [("rk4", "joint"), ("dopri5", "per_sample"), pytest.param("dopri5", "joint", marks=pytest.mark.slow)]
)
def test_new_batch_size_or_values_do_not_recompile(solver, batch):
    """One graph for batch sizes 3, 5, 7 and for new values of y0 (tuple state, float32,
    aot_eager), also after an eager solve in the same process (no lazily filled cache in
    the graph)."""
    f = Split(MLP(dtype=torch.float32))
    model = compile_solve(f, t=T, solver=solver, batch=batch, backend="aot_eager", **_options(solver))
    for i, size in enumerate((3, 5, 5, 7)):
        y = _y0(size, torch.float32, seed=i)
        y0 = (y[:, :1], y[:, 1:])
        with torch.no_grad():
            ys = model(y0)
            ref = solve(f, y0, T, solver=solver, batch=batch, compact=False, **_options(solver))
        _close(ys, ref.ys, 1e-6)
    assert _graphs() == 1


# --------------------------------------------------------------------------- status


def test_status_is_checked_once_after_the_loop():
    """A failing sample: the graph returns its status (no host read inside the loop); the
    wrapper raises SolveFailedError after it, or returns the status with throw=False."""
    f, y0 = MLP(), _y0(3)
    opts = dict(t=T, solver="dopri5", batch="per_sample", rtol=1e-10, atol=1e-12, max_steps=4)
    model = compile_solve(f, backend="eager", **opts)
    with torch.no_grad(), pytest.raises(SolveFailedError, match="MAX_STEPS"):
        model(y0)
    model.module.throw, model.module.return_info = False, True
    with torch.no_grad():
        ys, info = model(y0)
        ref = solve(f, y0, T, solver="dopri5", batch="per_sample", rtol=1e-10, atol=1e-12, max_steps=4,
                    compact=False, throw=False)
    assert _graphs() == 1
    assert (info.status == int(Status.MAX_STEPS)).all()
    assert torch.equal(info.status, ref.status)
    assert torch.equal(torch.isnan(ys), torch.isnan(ref.ys))  # outputs past the failure are NaN


# --------------------------------------------------------------------------- module


def test_parameters_and_state_dict_are_fs():
    f = MLP()
    model = compile_solve(f, t=T, solver="rk4", steps=4)
    assert [id(p) for p in model.parameters()] == [id(p) for p in f.parameters()]
    assert sorted(model.state_dict()) == sorted(f"module.f.{k}" for k in f.state_dict())


@pytest.mark.parametrize("solver,batch", [("rk4", "joint"), ("dopri5", "per_sample")])
def test_eager_module_runs_the_python_loop(solver, batch):
    """Called eagerly, ODEModule runs odeserve's Python loop (no Dynamo, no graph) and
    equals odeserve.solve; its parameters get gradients."""
    f, y0 = MLP(), _y0(3)
    module = ODEModule(f, t=T, solver=solver, batch=batch, return_info=True, **_options(solver))
    ys, info = module(y0)
    ref = solve(f, y0, T, solver=solver, batch=batch, **_options(solver))
    assert _graphs() == 0
    _close(ys, ref.ys, 1e-12)
    assert torch.equal(info.status, ref.status) and torch.equal(info.accepted, ref.stats["accepted"])
    ys.square().sum().backward()
    assert all(p.grad is not None for p in f.parameters())


def test_each_compiled_model_has_its_own_graph_cache():
    """Dynamo's recompile limit counts graphs per code object; compiled models must not
    share one (else a process with a few models hits the limit under fullgraph)."""
    y0 = _y0(3)
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
        for steps in (4, 8):
            compile_solve(MLP(), t=T, solver="euler", steps=steps, backend="eager")(y0)
    assert _graphs() == 2


def test_solver_constants_stay_literals_across_compiled_models():
    """Two compiled models whose controller gains and rtol differ.  Dynamo makes a float it
    has seen change between graphs symbolic: an ``.item()`` inside the loop body, which
    Inductor cannot lower in a while_loop ("KeyError: 'unbacked_bindings'").  Const hands
    Dynamo text, so every graph holds plain literals."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    y0 = _y0(1)
    with torch.no_grad():
        for controller, rtol in (("pi", 1e-6), ("i", 1e-5)):
            compile_solve(MLP(), t=T, solver="dopri5", controller=controller, rtol=rtol, atol=1e-8,
                          backend=backend)(y0)
    code = "\n".join(m.code for g in graphs for m in g.modules() if isinstance(m, torch.fx.GraphModule))
    assert len(graphs) == 2 and "while_loop" in code
    assert ".item()" not in code and "_local_scalar_dense" not in code


def test_plain_torch_compile_of_a_prepared_module():
    """``torch.compile(ODEModule(...), fullgraph=True)`` works once the module has been
    prepared eagerly (here by an eager call)."""
    f, y0 = MLP(), _y0(3)
    module = ODEModule(f, t=T, solver="rk4", steps=8)
    with torch.no_grad():
        eager = module(y0)
        cnt = CompileCounterWithBackend("eager")
        compiled = torch.compile(module, fullgraph=True, backend=cnt)(y0)
    assert cnt.frame_count == 1
    _close(compiled, eager, 1e-12)


def test_unprepared_module_under_compile_says_what_to_do():
    module = ODEModule(MLP(), t=T, solver="rk4", steps=8)
    with torch.no_grad(), pytest.raises(Exception, match="prepared eagerly first"):
        torch.compile(module, fullgraph=True, backend="eager")(_y0(3))


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "solver,batch,y0_grad,backend",
    [
        ("rk4", "joint", False, "aot_eager"),
        pytest.param("dopri5", "per_sample", True, "aot_eager", marks=pytest.mark.slow),
        pytest.param("dopri5", "joint", False, "inductor", marks=pytest.mark.slow),
    ],
)
def test_compiled_training_gradients_equal_eager(solver, batch, y0_grad, backend):
    """sensitivity='autograd' through the compiled while_loop: forward and backward both
    compiled; the gradients of every output (interior times too) with respect to the
    parameters (and y0) equal eager autograd through the Python loop (float64)."""
    f = MLP()
    y0 = _y0(3).requires_grad_(y0_grad)
    model = compile_solve(f, t=T, solver=solver, batch=batch, backend=backend, **_options(solver))
    params = ([y0] if y0_grad else []) + list(f.parameters())
    (model(y0).square().sum()).backward()
    got = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    ref = solve(f, y0, T, solver=solver, batch=batch, compact=False, **_options(solver))
    ref.ys.square().sum().backward()
    assert _graphs() == 1
    for g, p in zip(got, params):
        _close(g, p.grad, 1e-10)


# --------------------------------------------------------------------------- inductor


@pytest.mark.slow
@pytest.mark.parametrize("solver,batch,rows", [("rk4", "per_sample", 4), ("dopri5", "joint", 4), ("dopri5", "joint", 1)])
def test_inductor_float32_matches_eager(solver, batch, rows):
    # rows=1: the batch-1 graph, where the default inference options rewrite f's matrix
    # products as Inductor's own code (decompose_mm_pass).  fast_tanh=False: the same tanh
    # as eager, so the same accept/reject decisions; float32 at rtol 1e-6 is rounding-level,
    # and the rational tanh (a few eps) moves them (tests/test_fast_tanh.py tests that path).
    f, y0 = MLP(dtype=torch.float32), _y0(rows, torch.float32)
    model = compile_solve(f, t=T, solver=solver, batch=batch, return_info=True, fast_tanh=False, **_options(solver))
    with torch.no_grad():
        ys, info = model(y0)
        ref = solve(f, y0, T, solver=solver, batch=batch, compact=False, **_options(solver))
    _close(ys, ref.ys, 1e-6)
    assert torch.equal(info.status, ref.status)
    assert torch.equal(info.accepted, ref.stats["accepted"])
    assert torch.equal(info.rejected, ref.stats["rejected"])


# --------------------------------------------------------------------------- grad mode, threads


def _frozen_mlp() -> nn.Module:
    return TimeConcatMLP(hidden=16).eval().requires_grad_(False)


def test_frozen_model_in_grad_mode_uses_the_inference_graph():
    """A frozen model called without ``torch.no_grad()`` (grad mode is PyTorch's default):
    nothing needs a gradient, so the inference graph runs — it used to fail in Dynamo
    ("returning intermediate with requires_grad_()") because the solve marked ``y0`` as
    requiring grad for the while loop's backward."""
    f = _frozen_mlp()
    y0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(3))
    model = compile_solve(f, solver="rk4", t0=0.0, t1=1.0, steps=4, backend="eager")
    ys = model(y0)
    assert not ys.requires_grad
    with torch.no_grad():
        want = solve(f, y0, [0.0, 1.0], solver="rk4", steps=4).ys
    assert torch.allclose(ys, want, atol=1e-6)


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_closure_over_a_trainable_tensor_gets_its_gradient(solver):
    """``f`` a plain function closing over a weight that requires grad, ``y0`` data (no
    grad): the compiled solve used to run its inference graph (nothing registered needed a
    gradient) and the weight's gradient was silently zero.  Now it equals eager autograd
    through the Python loop, and so does a user's own ``torch.compile`` of the module."""
    g = torch.Generator().manual_seed(5)
    w = (0.5 * torch.randn(2, 2, generator=g, dtype=torch.float64)).requires_grad_(True)

    def f(t, y):
        return torch.tanh(y @ w) * (1 + t)

    y0 = _y0(3)
    solve(f, y0, T, solver=solver, compact=False, **_options(solver)).ys.square().sum().backward()
    want, w.grad = w.grad.clone(), None
    assert want.abs().max() > 0.1
    model = compile_solve(f, t=T, solver=solver, backend="aot_eager", **_options(solver))
    ys = model(y0)
    assert ys.requires_grad
    ys.square().sum().backward()
    _close(w.grad, want, 1e-10)
    if solver != "rk4":
        return  # the same anchor; one solver is enough for the second compile (CI time)
    w.grad = None
    module = ODEModule(f, t=T, solver=solver, **_options(solver))
    module(y0)  # prepared eagerly
    torch.compile(module, fullgraph=True, backend="aot_eager")(y0).square().sum().backward()
    _close(w.grad, want, 1e-10)


def test_threads_option_is_validated():
    from odeserve.errors import InvalidOptionError

    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(InvalidOptionError, match="threads must be None or an int >= 1"):
            compile_solve(_frozen_mlp(), solver="rk4", steps=2, threads=bad)


_OMP = "#pragma omp parallel"


@pytest.mark.slow
def test_single_sample_graph_is_written_for_one_thread(monkeypatch):
    """Inductor writes OpenMP regions into its kernels when it compiles for more than one
    thread; one sample is too little work for them (bench/bench_latency.py --extra).  The
    default compiles a batch-1 graph for one thread even when the process runs two;
    ``threads=2`` asks for the parallel kernels.  Both agree with the eager solve."""
    from torch._inductor.utils import run_and_get_code

    # 64 × 65 products: big enough for Inductor to split them (not a 16-wide layer)
    f = TimeConcatMLP(dim=64, hidden=64).eval().requires_grad_(False)
    y0 = torch.randn(1, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = solve(f, y0, [0.0, 1.0], solver="rk4", steps=4).ys[-1]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # what Inductor reads for cpp.threads=-1
    codes = {}
    for threads in (None, 2):
        torch._dynamo.reset()
        model = compile_solve(f, solver="rk4", t0=0.0, t1=1.0, steps=4, threads=threads)
        with torch.no_grad():
            out, code = run_and_get_code(model, y0)
        assert float((out[-1] - want).abs().max()) <= 1e-6
        codes[threads] = "\n".join(code)
    assert _OMP not in codes[None]
    assert _OMP in codes[2]


@pytest.mark.parametrize("method", ["adjoint", "checkpoint", "reversible"])
def test_eager_only_sensitivities_are_refused_for_compiled_training(method):
    """Their backward loop is an autograd.Function Dynamo cannot trace: training through
    compile_solve used to end in InternalTorchDynamoError ("An intermediate tensor 'status'
    ... aliases an input or output").  Now a named error before compiling; inference under
    no_grad compiles and equals the eager solve."""
    from odeserve.errors import InvalidOptionError

    solver = "reversible_heun" if method == "reversible" else "rk4"
    f, y0 = MLP(), _y0(3)
    model = compile_solve(f, t=T, solver=solver, steps=4, sensitivity=method, backend="aot_eager")
    with pytest.raises(InvalidOptionError, match=f"sensitivity='{method}' does not compile for training"):
        model(y0)
    with torch.no_grad():
        got = model(y0)
        want = solve(f, y0, T, solver=solver, steps=4).ys
    _close(got, want, 1e-12)


def test_forward_sensitivity_is_refused_when_compiled():
    from odeserve.errors import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="sensitivity='forward' does not compile"):
        compile_solve(MLP(), t=T, solver="rk4", steps=4, sensitivity="forward")
