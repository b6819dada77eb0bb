"""ONNX export (``odeserve.export.to_onnx``) and ONNX Runtime inference (``OnnxModel``).

Every export here is a real ORT-vs-eager parity check: ``to_onnx`` itself runs the file in
ONNX Runtime on the example and on fresh batches of 1, 7 and 256 and refuses to write it on
a mismatch; the tests then check that gate's record and, independently, run the file through
:class:`OnnxModel` against the public :func:`odeserve.solve` on another batch.

Exports are slow on a 2-core machine (the dynamo exporter, used for ``loop`` mode, takes tens
of seconds each), so the model is a tiny MLP, each file is exported once per session
(:func:`exports`) and shared between tests, and the default run covers: every fixed-step
solver unrolled in float32 and float64; ``loop`` mode for rk4 in float64 and
rk4 in float32 (with dynamic output times), dopri5 in float32, bosh3 in float64 (tuple state,
output grid, dynamic times) and heun_euler in float64 (the max_steps status).  The rest of
the solver × dtype matrix in ``loop`` mode is ``@pytest.mark.slow``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from odeserve import DtypeMismatchError, ShapeMismatchError, SolveFailedError, Status, get_registry, solve  # noqa: E402
from odeserve.export import OnnxModel, read_metadata, to_onnx  # noqa: E402
from odeserve.export._artifact import (  # noqa: E402
    DataDependentControlFlowError,
    ExportError,
    InvalidArtifactError,
    ParityError,
    StepsNotReachedError,
    UnsupportedOpError,
)

try:
    from .problems import TimeConcatMLP  # noqa: E402
except ImportError:
    from problems import TimeConcatMLP  # noqa: E402

REG = get_registry()
FIXED = sorted(n for n in REG.entries("solver") if not REG.solver(n).adaptive)
ADAPTIVE = sorted(n for n in REG.entries("solver") if REG.solver(n).adaptive)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
TOL = {torch.float32: 1e-4, torch.float64: 1e-9}
# loop-mode cases in the default run (the rest of FIXED/ADAPTIVE × DTYPES are slow)
FAST_LOOP = {("rk4", "float64"), ("dopri5", "float32")}


def tuple_f(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A tuple state ``(x (B, 2), v (B, 1, 3))`` that couples its parts and depends on t."""
    x, v = state
    return torch.tanh(x) * v[:, 0, :2] + t[:, None], -v * torch.sin(x.sum(1))[:, None, None] * 0.5


F = TimeConcatMLP()


def _options(solver: str) -> dict[str, Any]:
    return dict(rtol=1e-6, atol=1e-8) if REG.solver(solver).adaptive else dict(steps=3)


def _example(dtype: torch.dtype, batch: int = 5, seed: int = 3) -> torch.Tensor:
    return torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed)).to(dtype)


class Exports:
    """Each configuration exported once per session, into one temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[str, Any] = {}

    def get(self, key: str, make: Callable[[Path], Any]) -> Any:
        if key not in self._done:
            self._done[key] = make(self.root / f"{key}.onnx")
        return self._done[key]

    def solver(self, solver: str, mode: str, dtype: str) -> Any:
        dt = DTYPES[dtype]
        return self.get(f"{solver}-{mode}-{dtype}", lambda p: to_onnx(
            F, _example(dt), p, solver=solver, mode=mode, dtype=dt, **_options(solver)))


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Exports:
    return Exports(tmp_path_factory.mktemp("onnx"))


def _check_against_solve(path: Path, f: Any, solver: str, dtype: torch.dtype, batch: int = 7,
                         times: list[float] | None = None, tol: float | None = None) -> float:
    """OnnxModel on a fresh batch vs the public odeserve.solve (per-sample batch mode)."""
    y = _example(dtype, batch, seed=11)
    f_cast = copy.deepcopy(f).to(dtype) if isinstance(f, nn.Module) else f
    sol = solve(f_cast, y, times or [0.0, 1.0], solver=solver, batch="per_sample", **_options(solver))
    got = OnnxModel(path)(y.numpy())
    want = (sol.ys if times else sol.ys[-1]).detach()
    err = float(np.abs(got - want.numpy()).max()) / max(1.0, float(want.abs().max()))
    limit = tol if tol is not None else TOL[dtype]
    assert err <= limit, f"{solver} {dtype}: OnnxModel vs odeserve.solve differ by {err:.3g} > {limit:.3g}"
    return err


def _assert_gate(result: Any, dtype: torch.dtype, tol: float | None = None) -> None:
    checks = result.parity
    assert {"example", "batch 1", "batch 7", "batch 256"} <= set(checks), checks
    limit = tol if tol is not None else TOL[dtype]
    assert max(checks.values()) <= limit, checks
    assert result.path.is_file()


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("solver", FIXED)
def test_fixed_unrolled_parity(exports: Exports, solver: str, dtype: str) -> None:
    r = exports.solver(solver, "unrolled", dtype)
    _assert_gate(r, DTYPES[dtype])
    assert r.metadata["exporter"] == "torchscript" and r.steps == 3
    _check_against_solve(r.path, F, solver, DTYPES[dtype])


def _loop_cases(solvers: list[str]) -> list[Any]:
    return [pytest.param(s, d, marks=() if (s, d) in FAST_LOOP else pytest.mark.slow) for s in solvers for d in DTYPES]


@pytest.mark.parametrize("solver, dtype", _loop_cases(FIXED))
def test_fixed_loop_parity(exports: Exports, solver: str, dtype: str) -> None:
    r = exports.solver(solver, "loop", dtype)
    _assert_gate(r, DTYPES[dtype])
    assert r.metadata["exporter"] == "dynamo"
    names = [n.op_type for n in onnx.load(str(r.path)).graph.node]
    assert names.count("Loop") == 1
    _check_against_solve(r.path, F, solver, DTYPES[dtype])


@pytest.mark.parametrize("solver, dtype", _loop_cases(ADAPTIVE))
def test_adaptive_loop_parity(exports: Exports, solver: str, dtype: str) -> None:
    dt = DTYPES[dtype]
    r = exports.solver(solver, "loop", dtype)
    tol = max(TOL[dt], 1e-5) if dt == torch.float32 else TOL[dt]  # float32: borderline accept/reject
    _assert_gate(r, dt, tol)
    assert r.metadata["adaptive"] is True and r.metadata["rtol"] == 1e-6
    _check_against_solve(r.path, F, solver, dt, tol=tol)
    out = OnnxModel(r.path).run(_example(dt, 3).numpy())
    assert (out["status"] == 0).all() and (out["n_steps"] > 0).all()


def test_unrolled_refuses_adaptive(tmp_path: Path) -> None:
    from odeserve import InvalidOptionError

    with pytest.raises(InvalidOptionError, match="adaptive.*loop"):
        to_onnx(F, _example(torch.float32), tmp_path / "m.onnx", solver="dopri5", mode="unrolled")
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="session")
def tuple_grid(exports: Exports) -> Any:
    """bosh3, float64, a tuple state, an output grid and the grid as a graph input."""
    y0 = (torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 1, 3, dtype=torch.float64))
    return exports.get("bosh3-tuple-grid", lambda p: to_onnx(
        tuple_f, y0, p, solver="bosh3", rtol=1e-7, atol=1e-9, output_times=[0.0, 0.4, 0.7, 1.5],
        dynamic_times=True, state_names=["x", "v"], mode="loop"))


def test_tuple_state_grid_dynamic_times(tuple_grid: Any) -> None:
    r = tuple_grid
    assert max(r.parity.values()) <= 1e-9, r.parity
    assert "shifted times" in r.parity
    m = OnnxModel(r.path)
    assert [s.name for s in m.inputs] == ["x", "v", "t"]
    assert [s.name for s in m.outputs] == ["x_ts", "v_ts", "status", "n_steps"]
    x, v = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 1, 3, dtype=torch.float64)
    t = torch.tensor([0.2, 0.5, 1.0, 1.3], dtype=torch.float64)
    got_x, got_v = m((x, v), t=t)  # torch in → torch out
    assert isinstance(got_x, torch.Tensor) and got_x.shape == (4, 6, 2) and got_v.shape == (4, 6, 1, 3)
    sol = solve(tuple_f, (x, v), t, solver="bosh3", rtol=1e-7, atol=1e-9, batch="per_sample")
    assert torch.allclose(got_x, sol.ys[0], atol=1e-9, rtol=0) and torch.allclose(got_v, sol.ys[1], atol=1e-9, rtol=0)
    with pytest.raises(TypeError, match="missing input.*'t'.*graph input"):
        m((x, v))


@pytest.fixture(scope="session")
def rk4_grid_f32(exports: Exports) -> Any:
    """rk4, float32, loop mode, output times as a graph input: step counts per interval frozen."""
    return exports.get("rk4-loop-grid-f32", lambda p: to_onnx(
        F, _example(torch.float32), p, solver="rk4", steps=20, output_times=[0.0, 0.25, 1.0],
        dynamic_times=True, mode="loop"))


def test_fixed_loop_output_grid_float32(rk4_grid_f32: Any) -> None:
    r = rk4_grid_f32
    _assert_gate(r, torch.float32)
    assert r.steps == 20 and r.metadata["output_times"] == [0.0, 0.25, 1.0]
    m = OnnxModel(r.path)
    y = _example(torch.float32, 256, seed=5)
    ys = m(y.numpy(), t=np.array([0.0, 0.25, 1.0], np.float32))
    sol = solve(F, y, [0.0, 0.25, 1.0], solver="rk4", steps=20, batch="per_sample")
    assert np.abs(ys - sol.ys.detach().numpy()).max() < 1e-5
    # the same grid structure on another span: 5 + 15 steps on [1, 1.5] and [1.5, 3]
    ys2 = m(y.numpy(), t=np.array([1.0, 1.5, 3.0], np.float32))
    sol2 = solve(F, y, [1.0, 1.5, 3.0], solver="rk4", steps=20, batch="per_sample")
    assert np.abs(ys2 - sol2.ys.detach().numpy()).max() < 1e-5


def test_dynamic_span_inputs(exports: Exports) -> None:
    """t0, t1 as graph inputs (0-d): numpy scalars, Python floats and 0-d tensors all work."""
    r = exports.get("midpoint-span", lambda p: to_onnx(
        F, _example(torch.float32), p, solver="midpoint", steps=8, mode="unrolled", dynamic_times=True))
    assert "shifted times" in r.parity and max(r.parity.values()) <= 1e-4
    m = OnnxModel(r.path)
    assert [s.name for s in m.inputs] == ["y0", "t0", "t1"] and m.inputs[1].shape == ()
    y = _example(torch.float32, 4, seed=9)
    want = solve(F, y, [0.5, 2.0], solver="midpoint", steps=8, batch="per_sample").ys[-1].detach().numpy()
    for t0, t1 in ((np.float32(0.5), np.float32(2.0)), (np.array(0.5, np.float32), np.array(2.0, np.float32)),
                   (0.5, 2.0), (torch.tensor(0.5), torch.tensor(2.0))):
        got = m(y.numpy(), t0=t0, t1=t1)
        assert np.abs(np.asarray(got) - want).max() < 1e-5, (type(t0), got, want)
    with pytest.raises(ShapeMismatchError, match="'t0' has shape \\[1\\]"):
        m(y.numpy(), t0=np.array([0.5], np.float32), t1=2.0)


@pytest.fixture(scope="session")
def max_steps_export(exports: Exports) -> Any:
    """heun_euler, float64, max_steps=4 at a tight tolerance: every sample stops early."""
    return exports.get("heun_euler-maxsteps", lambda p: to_onnx(
        F, _example(torch.float64), p, solver="heun_euler", rtol=1e-9, atol=1e-11, max_steps=4, mode="loop",
        parity_batches=(1, 7)))


def test_adaptive_status_output(max_steps_export: Any) -> None:
    m = OnnxModel(max_steps_export.path)
    assert m.metadata["max_steps"] == "4"
    y = _example(torch.float64, 7, seed=2).numpy()
    out = m.run(y)
    assert (out["status"] == int(Status.MAX_STEPS)).all()
    assert (out["n_steps"] == 4).all()
    assert np.isnan(out["y1"]).all()  # past the time reached: NaN, as in odeserve.solve
    with pytest.raises(SolveFailedError, match="MAX_STEPS"):
        m(y)
    assert np.isnan(m(y, throw=False)).all()


# --------------------------------------------------------------------------- steps="auto"


def test_steps_auto_records_choice(exports: Exports) -> None:
    r = exports.get("rk4-auto", lambda p: to_onnx(
        F, _example(torch.float64), p, solver="rk4", steps="auto", rtol=1e-6, atol=1e-8, mode="unrolled",
        dtype=torch.float64))
    a = r.auto_steps
    assert a is not None and r.steps == a.steps and a.error <= 1.0
    errs = dict(a.tried)
    assert a.steps - 1 in errs and errs[a.steps - 1] > 1.0  # the smallest passing count
    meta = read_metadata(r.path)
    recorded = json.loads(meta["steps_auto"])
    assert int(meta["steps"]) == a.steps and recorded["rtol"] == 1e-6 and recorded["error"] == a.error


def test_steps_auto_unreachable_reports_best(tmp_path: Path) -> None:
    with pytest.raises(StepsNotReachedError, match=r"up to 8 .*best: steps=8") as info:
        to_onnx(F, _example(torch.float32), tmp_path / "m.onnx", solver="euler", steps="auto", rtol=1e-9,
                atol=1e-12, steps_cap=8, mode="unrolled")
    assert info.value.best_steps == 8 and info.value.best_error > 1
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- metadata


def test_metadata_round_trip(exports: Exports) -> None:
    r = exports.solver("rk4", "unrolled", "float64")
    meta = read_metadata(r.path)
    m = OnnxModel(r.path)
    assert m.metadata == meta
    for key in ("solver", "mode", "dtype", "opset", "steps", "t0", "t1", "odeserve_version", "torch_version",
                "parity_error", "onnx_version", "created"):
        assert key in meta, key
    assert meta["solver"] == "rk4" and meta["dtype"] == "float64" and meta["steps"] == "3"
    assert float(meta["parity_error"]) == r.metadata["parity_error"] <= 1e-9
    assert int(meta["opset"]) == onnx.load(str(r.path)).opset_import[0].version
    assert meta["torch_version"] == torch.__version__


# --------------------------------------------------------------------------- runtime


def test_concurrent_runs_identical(exports: Exports) -> None:
    r = exports.solver("rk4", "unrolled", "float32")
    m = OnnxModel(r.path, threads=1)
    y = _example(torch.float32, 16, seed=4).numpy()
    want = m(y)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            for _ in range(50):
                out = m(y)
                with lock:
                    results.append(out)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 400 and all(np.array_equal(o, want) for o in results)


def test_torch_in_torch_out_and_numpy_in_numpy_out(exports: Exports) -> None:
    m = OnnxModel(exports.solver("rk4", "unrolled", "float32").path)
    y = _example(torch.float32, 3)
    assert isinstance(m(y), torch.Tensor) and isinstance(m(y.numpy()), np.ndarray)
    assert np.array_equal(m(y).numpy(), m(y.numpy()))


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(), reason="no CUDA provider")
def test_cuda_provider(exports: Exports) -> None:  # pragma: no cover - needs onnxruntime-gpu and a GPU
    m = OnnxModel(exports.solver("rk4", "unrolled", "float32").path, providers="auto")
    assert m.session.get_providers()[0] == "CUDAExecutionProvider"
    y = _example(torch.float32, 7)
    want = OnnxModel(m.path, providers=["CPUExecutionProvider"])(y.numpy())
    if torch.cuda.is_available():
        got = m(y.cuda())
        assert got.is_cuda and np.allclose(got.cpu().numpy(), want, atol=1e-5)
    assert np.allclose(m(y.numpy()), want, atol=1e-5)


# --------------------------------------------------------------------------- bad input


def test_corrupt_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"definitely not a protobuf \x00\xff" * 10)
    with pytest.raises(InvalidArtifactError, match="not a readable ONNX model"):
        OnnxModel(p)


def test_truncated_file(exports: Exports, tmp_path: Path) -> None:
    good = exports.solver("rk4", "unrolled", "float32").path.read_bytes()
    p = tmp_path / "cut.onnx"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(InvalidArtifactError, match="corrupt or truncated"):
        OnnxModel(p)
    with pytest.raises(FileNotFoundError):
        OnnxModel(tmp_path / "missing.onnx")


def test_foreign_and_tampered_files(exports: Exports, tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 2])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Neg", ["x"], ["y"])], "g", [x], [y])
    foreign = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(InvalidArtifactError, match="not an odeserve export"):
        OnnxModel(tmp_path / "foreign.onnx")
    # an odeserve file whose graph signature no longer matches its metadata
    model = onnx.load(str(exports.solver("rk4", "unrolled", "float32").path))
    model.graph.input[0].name = "renamed"
    for node in model.graph.node:
        node.input[:] = ["renamed" if i == "y0" else i for i in node.input]
    onnx.save(model, str(tmp_path / "tampered.onnx"))
    with pytest.raises(InvalidArtifactError, match="signature does not match"):
        OnnxModel(tmp_path / "tampered.onnx")


def test_wrong_dtype_shape_and_names_at_run_time(exports: Exports) -> None:
    m = OnnxModel(exports.solver("rk4", "unrolled", "float32").path)
    with pytest.raises(DtypeMismatchError, match="'y0' has dtype float64 but the model takes float32"):
        m(np.zeros((3, 2), np.float64))
    with pytest.raises(DtypeMismatchError, match="float32"):
        m(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(ShapeMismatchError, match=r"shape \[3, 5\] but the model takes \[batch, 2\]"):
        m(np.zeros((3, 5), np.float32))
    with pytest.raises(ShapeMismatchError, match="shape"):
        m(np.zeros((2,), np.float32))
    with pytest.raises(TypeError, match="unknown input 'z'"):
        m(np.zeros((3, 2), np.float32), z=1)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        m([[0.0, 0.0]])


def test_unsupported_op_is_named(tmp_path: Path) -> None:
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(y)

    with pytest.raises(UnsupportedOpError, match="bessel_j0") as info:
        to_onnx(f, _example(torch.float32), tmp_path / "m.onnx", solver="euler", steps=2, mode="unrolled")
    assert "bessel_j0" in info.value.op and "test_onnx.py" in str(info.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_unsupported_op_is_named_loop(tmp_path: Path) -> None:
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.special.bessel_j0(y)

    with pytest.raises(UnsupportedOpError, match="bessel_j0"):
        to_onnx(f, _example(torch.float32), tmp_path / "m.onnx", solver="euler", steps=2, mode="loop")
    assert not list(tmp_path.iterdir())


def _branchy(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.sum() > 0:  # Python control flow on data: must be refused, not frozen
        return -y
    return y


def test_data_dependent_control_flow_refused(tmp_path: Path) -> None:
    with pytest.raises(DataDependentControlFlowError, match=r"tensor's values.*test_onnx.py:\d+ \(if y.sum\(\) > 0"):
        to_onnx(_branchy, _example(torch.float32), tmp_path / "m.onnx", solver="euler", steps=2, mode="unrolled")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_data_dependent_control_flow_refused_loop(tmp_path: Path) -> None:
    with pytest.raises(DataDependentControlFlowError, match="control flow"):
        to_onnx(_branchy, _example(torch.float32), tmp_path / "m.onnx", solver="euler", steps=2, mode="loop")
    assert not list(tmp_path.iterdir())


class _Stateful(nn.Module):
    """Python state that changes between calls: a trace freezes it, the eager solve does not."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return -y * (1.0 + 0.01 * self.calls)


def test_failed_parity_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    with pytest.raises(ParityError, match="no file was written") as info:
        to_onnx(_Stateful(), _example(torch.float32), out, solver="rk4", steps=3, mode="unrolled")
    assert max(info.value.errors.values()) > info.value.tolerance
    assert not list(tmp_path.iterdir())
    # an existing good file is never clobbered by a failed export
    out.write_bytes(b"keep")
    with pytest.raises(ParityError):
        to_onnx(F, _example(torch.float32), out, solver="rk4", steps=3, mode="unrolled", parity_tol=0.0,
                parity_batches=(256,))
    assert out.read_bytes() == b"keep" and [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_output_path_not_writable(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        to_onnx(F, _example(torch.float32), tmp_path / "nope" / "m.onnx", solver="euler", steps=1, mode="unrolled")
    with pytest.raises(ExportError, match="is a directory"):
        to_onnx(F, _example(torch.float32), tmp_path, solver="euler", steps=1, mode="unrolled")
    with pytest.raises(ExportError, match="not writable"):
        to_onnx(F, _example(torch.float32), "/proc/m.onnx", solver="euler", steps=1, mode="unrolled")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ExportError, match="not writable"):
                to_onnx(F, _example(torch.float32), ro / "m.onnx", solver="euler", steps=1, mode="unrolled")
        finally:
            ro.chmod(0o700)


# --------------------------------------------------------------------------- CLI


def make_model() -> nn.Module:
    """The factory the CLI test loads (``tests.test_onnx:make_model`` style, by file path)."""
    return TimeConcatMLP()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "odeserve", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = TimeConcatMLP()
    with torch.no_grad():
        model.l2.bias.fill_(0.25)  # weights that differ from the factory's, so loading them matters
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    x = _example(torch.float32, 6, seed=8)
    np.save(tmp_path / "x.npy", x.numpy())
    out = tmp_path / "m.onnx"
    r = _cli("export", "test_onnx:make_model", "--weights", str(tmp_path / "weights.pt"), "--state-shape", "2",
             "--solver", "rk4", "--steps", "4", "--mode", "unrolled", "-o", str(out), "--parity-batches", "1,7",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and out.is_file()

    r = _cli("inspect", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "solver" in r.stdout and "rk4" in r.stdout and "y0: float32[batch, 2]" in r.stdout
    assert "y1: float32[batch, 2]" in r.stdout and "parity_error" in r.stdout

    r = _cli("run", str(out), "--input", "x.npy", "--output", "y.npy", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = np.load(tmp_path / "y.npy")
    want = solve(model, x, [0.0, 1.0], solver="rk4", steps=4, batch="per_sample").ys[-1].detach().numpy()
    assert np.abs(got - want).max() < 1e-5

    # the rest in this process (each subprocess pays the torch import again)
    from odeserve.cli import main

    assert main(["bench", str(out), "--batch", "1", "4", "--threads", "1", "--repeat", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["batch"], row["threads"]) for row in rows] == [(1, 1), (4, 1)]
    np.save(tmp_path / "bad.npy", x.double().numpy())
    assert main(["run", str(out), "--input", str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert "dtype float64" in err and "Traceback" not in err
    assert main(["export", "no_such_module:make", "--state-shape", "2", "--steps", "2", "-o",
                 str(tmp_path / "z.onnx")]) == 2
    assert "cannot import" in capsys.readouterr().err
