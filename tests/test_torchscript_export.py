"""PyTorch-native artifacts: TorchScript (``to_torchscript``), exported programs
(``to_exported_program``) and AOTInductor packages (``to_aoti``).

Each exporter gates its file on parity with the eager solve itself; the tests check that
gate's record and, independently, load each file the way a user does (``torch.jit.load``,
``torch.export.load``, :func:`load_aoti`) and compare it with the public
:func:`odeserve.solve` at batch sizes 1, 5 and 64 (fresh inputs, not the parity gate's).

Exports are shared per session and kept small (an MLP 2 → 8 → 2, a few steps): TorchScript
takes about a second per solver, ``torch.export`` of a ``torch.while_loop`` 5–15 s, an
AOTInductor compile a minute or more (``@pytest.mark.slow``).
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from odeserve import Status, get_registry, solve
from odeserve.errors import DtypeMismatchError, InvalidOptionError, ShapeMismatchError
from odeserve.export import (
    ArtifactExport,
    TorchScriptDeprecationWarning,
    load_aoti,
    load_artifact,
    read_artifact_metadata,
    to_aoti,
    to_exported_program,
    to_torchscript,
)
from odeserve.export import libtorch
from odeserve.export._artifact import DataDependentControlFlowError, ExportError, InvalidArtifactError, ParityError

try:
    from .problems import TimeConcatMLP
except ImportError:
    from problems import TimeConcatMLP

# The tests load files with torch.jit.load as a user would; torch warns that it is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

REG = get_registry()
FIXED = sorted(n for n in REG.entries("solver") if not REG.solver(n).adaptive)
ADAPTIVE = sorted(n for n in REG.entries("solver") if REG.solver(n).adaptive)
BATCHES = (1, 5, 64)
STEPS = 5
RTOL, ATOL = 1e-5, 1e-7


def make_model() -> nn.Module:
    """The factory the CLI test loads."""
    return TimeConcatMLP()


F = TimeConcatMLP()


def tuple_f(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A tuple state ``(x (B, 2), v (B, 1, 3))`` that couples its parts and depends on t."""
    x, v = state
    return torch.tanh(x) * v[:, 0, :2] + t[:, None], -v * torch.sin(x.sum(1))[:, None, None] * 0.5


def _y(batch: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _settings(solver: str) -> dict[str, Any]:
    if not REG.solver(solver).adaptive:
        return dict(steps=STEPS)
    # heun_euler is order 2: at 1e-5 it takes hundreds of steps, seconds per parity check
    return dict(rtol=RTOL * (100 if solver == "heun_euler" else 1), atol=ATOL)


def _want(f: Callable[..., Any], y: Any, solver: str, t: Any = (0.0, 1.0)) -> Any:
    with torch.no_grad():
        return solve(f, y, list(t), solver=solver, batch="per_sample", **_settings(solver))


def _ts(solver: str, path: Path, **kw: Any) -> ArtifactExport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TorchScriptDeprecationWarning)
        return to_torchscript(F, _y(3, 0), path, solver=solver, parity_batches=BATCHES, **_settings(solver), **kw)


@pytest.fixture(scope="session")
def ts_files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ArtifactExport]:
    """One TorchScript export per solver, made on first use."""
    folder = tmp_path_factory.mktemp("torchscript")
    made: dict[str, ArtifactExport] = {}

    def get(solver: str) -> ArtifactExport:
        if solver not in made:
            made[solver] = _ts(solver, folder / f"{solver}.pt")
        return made[solver]

    return get


@pytest.fixture(scope="session")
def pt2_files(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ArtifactExport]:
    """One exported program per solver (rk4, dopri5), made on first use."""
    folder = tmp_path_factory.mktemp("pt2")
    made: dict[str, ArtifactExport] = {}

    def get(solver: str) -> ArtifactExport:
        if solver not in made:
            made[solver] = to_exported_program(F, _y(3, 0), folder / f"{solver}.pt2", solver=solver,
                                               parity_batches=BATCHES, **_settings(solver))
        return made[solver]

    return get


def _check_gate(result: ArtifactExport, fmt: str, solver: str) -> None:
    assert result.path.is_file() and result.size_bytes == result.path.stat().st_size
    assert set(result.parity) == {"example"} | {f"batch {b}" for b in BATCHES}
    tol = float(result.metadata["parity_tolerance"])
    assert max(result.parity.values()) <= tol
    meta = read_artifact_metadata(result.path)
    assert meta["format"] == libtorch.FORMATS[fmt] and meta["solver"] == solver
    assert meta["t0"] == "0.0" and meta["t1"] == "1.0" and meta["dtype"] == "float32"
    assert float(meta["parity_error"]) == max(result.parity.values())
    assert meta["torch_version"] == torch.__version__ and "odeserve_version" in meta
    if REG.solver(solver).adaptive:
        assert float(meta["rtol"]) == _settings(solver)["rtol"] and float(meta["atol"]) == ATOL
        assert "steps" not in meta
    else:
        assert int(meta["steps"]) == STEPS == result.steps


def _check_batches(model: Callable[..., Any], solver: str, tol: float) -> None:
    """The loaded artifact against odeserve.solve on fresh batches of 1, 5 and 64."""
    adaptive = REG.solver(solver).adaptive
    for b in BATCHES:
        y = _y(b, 100 + b)
        sol = _want(F, y, solver)
        with torch.no_grad():
            out = model(y)
        assert out[0].shape == (b, 2)
        assert (out[0] - sol.ys[-1]).abs().max().item() <= tol, (solver, b)
        assert torch.equal(out[1], sol.status)
        if adaptive:
            assert torch.equal(out[2], sol.stats["steps"]), (solver, b)  # same loop, same decisions


# --------------------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("solver", FIXED)
def test_torchscript_fixed_round_trip(solver: str, ts_files: Callable[[str], ArtifactExport]) -> None:
    result = ts_files(solver)
    _check_gate(result, "torchscript", solver)
    assert result.metadata["mode"] == "unrolled"
    _check_batches(torch.jit.load(str(result.path)), solver, tol=1e-6)


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_torchscript_adaptive_keeps_its_loop(solver: str, ts_files: Callable[[str], ArtifactExport]) -> None:
    result = ts_files(solver)
    _check_gate(result, "torchscript", solver)
    assert result.metadata["mode"] == "loop" and "script" in result.metadata["exporter"]
    # a real loop, not a frozen trace: per-sample step counts on fresh batches equal eager's
    _check_batches(torch.jit.load(str(result.path)), solver, tol=1e-5)


def test_torchscript_metadata_is_in_the_file(ts_files: Callable[[str], ArtifactExport]) -> None:
    result = ts_files("rk4")
    extra = {"odeserve.json": ""}
    torch.jit.load(str(result.path), _extra_files=extra)
    stored = json.loads(extra["odeserve.json"])
    assert stored["odeserve.solver"] == "rk4" and stored["odeserve.steps"] == str(STEPS)


def test_torchscript_tuple_state_output_times_and_time_inputs(tmp_path: Path) -> None:
    x0 = (torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 1, 3, dtype=torch.float64))
    ts = [0.0, 0.3, 1.0]
    for solver, kw in (("rk4", dict(steps=8)), ("bosh3", dict(rtol=1e-7, atol=1e-9))):
        with pytest.warns(TorchScriptDeprecationWarning):
            r = to_torchscript(tuple_f, x0, tmp_path / f"{solver}.pt", solver=solver, output_times=ts,
                               dynamic_times=True, parity_batches=(1, 5), **kw)
        assert r.metadata["time_inputs"] == ["t"] and r.metadata["dtype"] == "float64"
        model = torch.jit.load(str(r.path))
        y = (torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 1, 3, dtype=torch.float64))
        grid = torch.tensor([0.5, 0.9, 1.6], dtype=torch.float64)
        want = solve(tuple_f, y, grid, solver=solver, batch="per_sample", **kw)
        got = model(*y, grid)
        for g, w in zip(got[:2], want.ys):
            assert g.shape == w.shape and (g - w).abs().max().item() < 1e-9


def test_torchscript_gives_one_warning_of_its_own(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        to_torchscript(F, _y(3, 0), tmp_path / "m.pt", solver="euler", steps=2, parity_batches=(2,))
    assert [w.category for w in caught] == [TorchScriptDeprecationWarning], [str(w.message) for w in caught]
    assert "to_exported_program" in str(caught[0].message)


# --------------------------------------------------------------------------- exported program


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_exported_program_round_trip(solver: str, pt2_files: Callable[[str], ArtifactExport]) -> None:
    result = pt2_files(solver)
    _check_gate(result, "pt2", solver)
    assert result.metadata["batch_min"] == 1 and result.metadata["mode"] == "loop"
    extra = {"odeserve.json": ""}
    program = torch.export.load(str(result.path), extra_files=extra)
    assert json.loads(extra["odeserve.json"])["odeserve.solver"] == solver
    _check_batches(program.module(), solver, tol=1e-5)


def test_solver_constants_do_not_enter_the_loop(pt2_files: Callable[[str], ArtifactExport]) -> None:
    # Const: while torch.export traces, tableau coefficients, controller gains and rtol/atol
    # are literal ops, not captured tensors the compiled while_loop re-wraps every iteration
    # (dopri5's body had ~56 inputs).  What is left: the iteration count, the 9 loop carries,
    # f's parameters and the end time.
    program = torch.export.load(str(pt2_files("dopri5").path))
    body = program.graph_module.while_loop_body_graph_0
    inputs = [n for n in body.graph.nodes if n.op == "placeholder"]
    assert len(inputs) <= 1 + 9 + len(list(F.parameters())) + 2, len(inputs)


def test_per_sample_scalars_are_contiguous_at_batch_one() -> None:
    # Regression: made by expanding a 0-d tensor, they kept strides (0, 0) at batch 1, which
    # the while_loop body does not reproduce; AOTInductor then refused a batch-1 adaptive solve
    # ("carried_inputs and body_output ... stride: (0, 0) vs (1, 1)").
    from odeserve._api import prepare

    p = prepare(F, _y(1, 4), [0.0, 1.0], solver="dopri5", batch="per_sample", **_settings("dopri5"))
    assert p.problem.scalar_like(torch.tensor(0.5), 1).stride() == (1, 1)


def test_exported_program_of_an_adaptive_solve_at_a_fixed_batch_of_one(tmp_path: Path) -> None:
    y = _y(1, 4)
    r = to_exported_program(F, y, tmp_path / "b1.pt2", solver="dopri5", dynamic_batch=False,
                            parity_batches=(), **_settings("dopri5"))
    want = solve(F, y, [0.0, 1.0], solver="dopri5", batch="per_sample", **_settings("dopri5"))
    got = torch.export.load(str(r.path)).module()(y)
    assert (got[0] - want.ys[-1]).abs().max().item() < 1e-5 and torch.equal(got[1], want.status)


# --------------------------------------------------------------------------- AOTInductor


@pytest.mark.slow
def test_aoti_round_trip(tmp_path: Path) -> None:
    result = to_aoti(F, _y(3, 0), tmp_path / "m.pt2", solver="rk4", steps=3, parity_batches=BATCHES,
                     progress=False)
    assert result.path.is_file() and max(result.parity.values()) <= 1e-4
    meta = read_artifact_metadata(result.path)
    assert meta["format"] == libtorch.FORMATS["aoti"] and meta["steps"] == "3" and "parity_error" in meta
    assert meta["fast_tanh"] == "true"  # float32: tanh compiled as the rational approximation
    model = load_aoti(result.path)
    assert model._model.get_metadata()["odeserve.solver"] == "rk4"  # compiled in, for C++ too
    # Called through the package's flat C++ run (no pytree specs parsed per call): the same
    # outputs as the generic AOTICompiledModel call.
    assert model._run is not None
    y = _y(3, 9)
    assert all(torch.equal(a, b) for a, b in zip(model(y), model._model(y)))
    for b in BATCHES:
        y = _y(b, 100 + b)
        want = solve(F, y, [0.0, 1.0], solver="rk4", steps=3, batch="per_sample")
        out = model(y)
        assert (out[0] - want.ys[-1]).abs().max().item() < 1e-5 and torch.equal(out[1], want.status)
    with pytest.raises(DtypeMismatchError):
        model(_y(2, 0, torch.float64))
    with pytest.raises(ShapeMismatchError):
        model(torch.zeros(2, 3))
    # What ``odeserve run`` uses: outputs by name, numpy in and out, the package's numbers.
    outs = load_artifact(result.path).run(y.numpy())
    assert list(outs) == ["y1", "status"] and torch.equal(torch.from_numpy(outs["y1"]), model(y)[0])
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    _assert_kernels_use_fma(result.path, tmp_path)


def _assert_kernels_use_fma(package: Path, tmp_path: Path) -> None:
    """The package's compiled kernels use fused multiply-add instructions (odeserve builds
    with ``-ffp-contract=fast``; Inductor's default, ``off``, writes none), where this CPU
    has FMA and binutils' ``objdump`` is there to look."""
    import shutil
    import subprocess

    cpu = Path("/proc/cpuinfo")
    if shutil.which("objdump") is None or not cpu.is_file() or " fma " not in cpu.read_text():
        return
    with zipfile.ZipFile(package) as z:
        libs = [n for n in z.namelist() if n.endswith(".so")]
        assert libs, z.namelist()
        found = 0
        for n in libs:
            lib = tmp_path / "fma_check.so"
            lib.write_bytes(z.read(n))
            found += subprocess.run(["objdump", "-d", str(lib)], capture_output=True, text=True, check=True).stdout.count("vfmadd")
            lib.unlink()
    assert found > 0, "no FMA instructions in the package's kernels"


# --------------------------------------------------------------------------- refusals


def test_failed_parity_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eager = libtorch._eager

    def off_by_one(*args: Any, **kw: Any) -> Any:  # the "eager" reference the gate compares with
        ys, status = eager(*args, **kw)
        return [y + 1.0 for y in ys], status

    target = tmp_path / "m.pt"
    monkeypatch.setattr(libtorch, "_eager", off_by_one)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TorchScriptDeprecationWarning)
        with pytest.raises(ParityError, match="no file was written") as info:
            to_torchscript(F, _y(3, 0), target, solver="rk4", steps=2, parity_batches=(2,))
    assert info.value.errors and min(info.value.errors.values()) > 0.1
    assert list(tmp_path.iterdir()) == []
    # an existing good file is not clobbered either
    target.write_bytes(b"good")
    with pytest.raises(ParityError):
        to_torchscript(F, _y(3, 0), target, solver="rk4", steps=2, parity_batches=(2,))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"] and target.read_bytes() == b"good"


def test_unwritable_paths_fail_before_exporting(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist"):
        to_torchscript(F, _y(3, 0), tmp_path / "missing" / "m.pt", solver="rk4", steps=2)
    with pytest.raises(ExportError, match="is a directory"):
        to_exported_program(F, _y(3, 0), tmp_path, solver="rk4", steps=2)
    with pytest.raises(InvalidOptionError, match=r"\.pt2"):
        to_aoti(F, _y(3, 0), tmp_path / "m.so", solver="rk4", steps=2)


def test_value_branches_in_f_are_refused(tmp_path: Path) -> None:
    def branchy(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y if float(y.sum()) > 0 else y

    with pytest.raises(DataDependentControlFlowError, match="torch.where"):
        to_torchscript(branchy, _y(3, 0), tmp_path / "m.pt", solver="rk4", steps=2)
    assert list(tmp_path.iterdir()) == []


def test_torchscript_of_a_closure_over_trainable_parameters_says_what_to_pass(tmp_path: Path) -> None:
    """torch.jit.trace cannot bake a tensor that requires grad into the file: the error names
    the cause and the fix (pass the module), not torch's internal message alone."""
    net = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ExportError, match=r"captures one .*Pass the nn.Module itself"):
        to_torchscript(lambda t, y: net(y), _y(3, 0), tmp_path / "m.pt", solver="rk4", steps=2)
    assert list(tmp_path.iterdir()) == []


def test_metadata_reader_refuses_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_artifact_metadata(tmp_path / "none.pt")
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(plain))
    with pytest.raises(InvalidArtifactError, match="without odeserve metadata"):
        read_artifact_metadata(plain)
    with zipfile.ZipFile(tmp_path / "bad.pt2", "w") as z:
        z.writestr("x/extra/odeserve.json", "{not json")
    with pytest.raises(InvalidArtifactError):
        read_artifact_metadata(tmp_path / "bad.pt2")
    with pytest.raises(InvalidArtifactError, match="not an odeserve AOTInductor"):
        load_aoti(_plain_odeserve_file(tmp_path))


def _plain_odeserve_file(tmp_path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TorchScriptDeprecationWarning)
        return to_torchscript(F, _y(3, 0), tmp_path / "ts.pt", solver="euler", steps=1, parity_batches=(2,)).path


# --------------------------------------------------------------------------- CLI


def test_cli_export_torchscript_and_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from odeserve.cli import main

    out = tmp_path / "m.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TorchScriptDeprecationWarning)
        assert main(["export", "test_torchscript_export:make_model", "--format", "torchscript", "--state-shape", "2",
                     "--solver", "dopri5", "--rtol", "1e-5", "-o", str(out), "--parity-batches", "1,5"]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "odeserve-torchscript/1" in text and "forward(y0: float32[batch, 2]) -> (y1, status, n_steps)" in text
    refusals = [  # (format, file suffix, the flag and its value, what the error says)
        ("pt2", "pt2", ["--opset", "18"], "--opset applies to --format onnx only"),
        ("pt2", "pt2", ["--threads", "1"], "--threads applies to --format aoti only"),
        ("onnx", "onnx", ["--prefix-steps", "3"], "--prefix-steps applies to --format aoti only"),
        ("aoti", "pt2", ["--prefix-steps", "many"], "--prefix-steps must be 'auto' or a step count"),
    ]
    for fmt, suffix, flag, message in refusals:
        assert main(["export", "test_torchscript_export:make_model", "--format", fmt, "--state-shape", "2",
                     "--steps", "2", *flag, "-o", str(tmp_path / f"m.{suffix}")]) == 2, (fmt, flag)
        assert message in capsys.readouterr().err, (fmt, flag)
    assert not math.isnan(float(read_artifact_metadata(out)["parity_error"]))


def test_cli_run_and_bench_serve_torchscript_and_exported_programs(
        ts_files: Callable[[str], ArtifactExport], pt2_files: Callable[[str], ArtifactExport], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``odeserve run`` / ``bench`` (through :func:`load_artifact`) run the PyTorch formats
    as they run ONNX: every output by name, the eager solve's numbers, inputs checked
    against the file's metadata, ONNX-only flags refused."""
    import numpy as np

    from odeserve.cli import main
    from odeserve.export import TorchArtifact

    y = _y(6, 41)
    np.save(tmp_path / "x.npy", y.numpy())
    for solver, files in (("dopri5", ts_files), ("rk4", ts_files), ("dopri5", pt2_files)):
        path = files(solver).path
        want = _want(F, y, solver)
        model = load_artifact(path)
        assert isinstance(model, TorchArtifact) and model.format == read_artifact_metadata(path)["format"]
        outs = model.run(y.numpy())
        assert list(outs) == json.loads(read_artifact_metadata(path)["outputs"]), path
        assert isinstance(outs["y1"], np.ndarray)
        assert np.abs(outs["y1"] - want.ys[-1].numpy()).max() < 1e-5 and np.array_equal(outs["status"], want.status)
        assert torch.equal(model.run(y)["y1"], torch.from_numpy(outs["y1"]))  # tensors in, tensors out
        out = tmp_path / f"{path.stem}_{path.suffix[1:]}.npy"
        assert main(["run", str(path), "--input", str(tmp_path / "x.npy"), "--output", str(out)]) == 0
        assert "status: 6 of 6 samples succeeded" in capsys.readouterr().out
        assert np.array_equal(np.load(out), outs["y1"])
    model = load_artifact(ts_files("rk4").path)
    with pytest.raises(DtypeMismatchError):
        model.run(y.double().numpy())
    with pytest.raises(ShapeMismatchError, match=r"state input 0 must be \(batch, 2\)"):
        model.run(np.zeros((4, 3), np.float32))
    with pytest.raises(TypeError, match="takes no"):
        model.run(y.numpy(), t0=0.0)
    path = str(ts_files("rk4").path)
    assert main(["run", path, "--input", str(tmp_path / "x.npy"), "--providers", "CPUExecutionProvider"]) == 2
    assert "execution providers apply to ONNX files only" in capsys.readouterr().err
    assert main(["bench", path, "--threads", "1", "--repeat", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (1, 256)] and all(r["median_ms"] > 0 for r in rows)
    # bench's default batches follow the file: its one batch, or from its smallest batch
    from odeserve.export._cli import _default_batches

    assert _default_batches({"dynamic_batch": "false", "batch": "512"}) == [512]
    assert _default_batches({"dynamic_batch": "true", "batch_min": "2"}) == [2, 256]


# --------------------------------------------------------------------------- LibTorch example


def test_libtorch_example_file(tmp_path: Path) -> None:
    """examples/libtorch: the file export_model.py writes gives, in torch.jit.load, the eager
    numbers it prints; and, when the C++ example has been built (examples/libtorch/build.sh,
    not in CI), solve_ode prints the same numbers from LibTorch."""
    import re
    import subprocess
    import sys

    here = Path(__file__).resolve().parents[1] / "examples" / "libtorch"
    model = tmp_path / "model.pt"
    proc = subprocess.run([sys.executable, str(here / "export_model.py"), str(model), "--batch", "3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

    def rows(text: str) -> list[list[float]]:
        return [[float(v) for v in m.group(1).split()] for m in re.finditer(r"^y1\[\d+\] =([-\d.e+ ]+?)(?:  status|$)",
                                                                             text, re.M)]

    eager = rows(proc.stdout)
    assert len(eager) == 3
    y0 = torch.linspace(-1.0, 1.0, 3 * 2).reshape(3, 2)  # the batch main.cpp builds
    got = torch.jit.load(str(model))(y0)[0]
    assert (got - torch.tensor(eager)).abs().max().item() < 1e-6
    exe = here / "build" / "solve_ode"
    if exe.is_file():
        out = subprocess.run([str(exe), str(model), "3"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert (torch.tensor(rows(out.stdout)) - torch.tensor(eager)).abs().max().item() < 1e-6


def _kernel_source(package: Path) -> str:
    with zipfile.ZipFile(package) as z:
        return "\n".join(z.read(n).decode() for n in z.namelist() if n.endswith(".cpp"))


def _cubic_decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Stiffer the larger ``y``: the step attempts an adaptive solve needs grow with it."""
    return -5.0 * y * (y * y).sum(1, keepdim=True)


@pytest.mark.slow
def test_aoti_one_row_adaptive_package_starts_with_a_stack_allocated_prefix(tmp_path: Path) -> None:
    """A one-row adaptive package holds a straight-line ``prefix`` model (the start and
    ``prefix_steps`` attempts, buffers on the stack) next to the looping ``model``.
    load_aoti answers from the prefix when the sample is done within it and from the whole
    loop when not; both reproduce the eager solve.  An Inductor compile earlier in the
    process must not cost the prefix its stack allocation (Inductor picks its wrapper class
    once per process)."""
    torch.compile(lambda x: x + 1, backend="inductor")(torch.ones(3))  # Inductor's first compile
    settings = dict(solver="dopri5", rtol=1e-3, atol=1e-5)
    path = tmp_path / "b1.pt2"
    example = torch.full((1, 2), 0.05)
    # "auto": the example's 2 attempts and a margin of 2 (each attempt adds compile time, so
    # the package here gets the bare 2)
    assert libtorch._prefix_attempts("auto", _cubic_decay, example, torch.tensor([0.0, 1.0]),
                                     dict(settings, batch="per_sample"), adaptive=True, one_row=True) == 4
    r = to_aoti(_cubic_decay, example, path, dynamic_batch=False, parity_batches=(), progress=False,
                prefix_steps=2, **settings)
    assert r.metadata["prefix_steps"] == 2
    assert set(r.parity) == {"example", "example (looping model alone)"}
    with zipfile.ZipFile(path) as z:
        prefix_src = "".join(z.read(n).decode() for n in z.namelist() if "/prefix/" in n and n.endswith(".cpp"))
        model_src = "".join(z.read(n).decode() for n in z.namelist() if "/model/" in n and n.endswith(".cpp"))
    assert "ArrayRefTensor" in prefix_src and "aoti_torch_empty_strided" not in prefix_src.split("run_impl")[-1]
    assert "while_loop" in model_src and "ArrayRefTensor" not in model_src
    model, whole = load_aoti(path), libtorch.AotiModel(path, loop_only=True)
    assert model._prefix is not None and whole._prefix is None
    for scale, attempts in ((0.05, 2), (0.3, 3), (1.0, 8)):  # the last two need the loop
        y = torch.full((1, 2), scale)
        want = solve(_cubic_decay, y, [0.0, 1.0], batch="per_sample", **settings)
        assert int(want.stats["accepted"] + want.stats["rejected"]) == attempts
        assert int(model._prefix([y])[1]) == (0 if attempts <= 2 else int(Status.RUNNING))
        for m in (model, whole):
            out = m(y)
            assert (out[0] - want.ys[-1]).abs().max().item() < 1e-5 and torch.equal(out[1], want.status)
            assert int(out[2]) == attempts


@pytest.mark.slow
def test_aoti_one_row_fixed_step_package_runs_straight_line_chunks(tmp_path: Path) -> None:
    """A one-row fixed-step package holds a ``chunk`` model (k steps from a step index,
    straight-line, buffers on the stack) that load_aoti calls ceil(steps / k) times; steps
    past the end (6 = 4 + 2) leave the state alone.  Same answer and status as the eager
    solve and as the looping model, a non-finite state included."""
    path = tmp_path / "b1.pt2"
    y = _y(1, 5)
    r = to_aoti(F, y, path, solver="rk4", steps=6, dynamic_batch=False, parity_batches=(), progress=False)
    assert (r.metadata["chunk_steps"], r.metadata["chunk_calls"], r.metadata["prefix_steps"]) == (4, 2, 0)
    assert set(r.parity) == {"example", "example (looping model alone)"}
    with zipfile.ZipFile(path) as z:
        chunk_src = "".join(z.read(n).decode() for n in z.namelist() if "/chunk/" in n and n.endswith(".cpp"))
    assert "ArrayRefTensor" in chunk_src and "aoti_torch_empty_strided" not in chunk_src.split("run_impl")[-1]
    model, whole = load_aoti(path), libtorch.AotiModel(path, loop_only=True)
    assert model._chunk is not None and whole._chunk is None
    for y in (_y(1, 6), _y(1, 7) * 3.0):
        want = solve(F, y, [0.0, 1.0], solver="rk4", steps=6, batch="per_sample")
        for m in (model, whole):
            out = m(y)
            assert len(out) == 2 and (out[0] - want.ys[-1]).abs().max().item() < 1e-5
            assert torch.equal(out[1], want.status)
    bad = torch.full((1, 2), float("nan"))
    assert int(model(bad)[1]) == int(whole(bad)[1]) == int(Status.NONFINITE)


def test_prefix_steps_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    with pytest.raises(InvalidOptionError, match="for adaptive solvers"):
        to_aoti(F, _y(1, 0), tmp_path / "m.pt2", solver="rk4", steps=2, dynamic_batch=False, prefix_steps=3)
    with pytest.raises(InvalidOptionError, match="one-row package"):
        to_aoti(F, _y(2, 0), tmp_path / "m.pt2", solver="dopri5", prefix_steps=3, **_settings("dopri5"))
    with pytest.raises(InvalidOptionError, match="prefix_steps must be"):
        to_aoti(F, _y(1, 0), tmp_path / "m.pt2", solver="dopri5", dynamic_batch=False, prefix_steps="some",
                **_settings("dopri5"))
    with pytest.raises(InvalidOptionError, match="chunk_steps needs a fixed-step solver"):
        to_aoti(F, _y(1, 0), tmp_path / "m.pt2", solver="dopri5", dynamic_batch=False, chunk_steps=2,
                **_settings("dopri5"))
    with pytest.raises(InvalidOptionError, match="chunk_steps needs"):
        to_aoti(F, _y(2, 0), tmp_path / "m.pt2", solver="rk4", steps=2, chunk_steps=2)
    with pytest.raises(InvalidOptionError, match="chunk_steps needs"):
        to_aoti(F, _y(1, 0), tmp_path / "m.pt2", solver="rk4", steps=2, dynamic_batch=False, chunk_steps=2,
                output_times=[0.0, 0.5, 1.0])
    with pytest.raises(InvalidOptionError, match="chunk_steps must be"):
        to_aoti(F, _y(1, 0), tmp_path / "m.pt2", solver="rk4", steps=2, dynamic_batch=False, chunk_steps=-1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_aoti_one_row_package_is_written_for_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package for exactly one row (``dynamic_batch=False`` at batch 1) is compiled for one
    thread whatever the building process runs (OpenMP regions cost a batch-1 solve more than
    they save); ``threads=2`` writes the parallel kernels.  The count is in the metadata and
    both packages reproduce the eager solve."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # a 2-thread build process
    f = TimeConcatMLP(dim=64, hidden=64)  # 64 × 65 products: big enough for Inductor to split
    y = torch.randn(1, 64, generator=torch.Generator().manual_seed(3))
    want = solve(f, y, [0.0, 1.0], solver="rk4", steps=3, batch="per_sample").ys[-1]
    for threads, expect in ((None, "1"), (2, "2")):
        path = tmp_path / f"m{expect}.pt2"
        to_aoti(f, y, path, solver="rk4", steps=3, dynamic_batch=False, parity_batches=(1,), progress=False,
                threads=threads, chunk_steps=None)
        assert read_artifact_metadata(path)["threads"] == expect
        assert ("#pragma omp parallel" in _kernel_source(path)) is (expect == "2")
        assert float((load_aoti(path)(y)[0] - want).abs().max()) < 1e-5
    with pytest.raises(InvalidOptionError, match="threads must be None or an int >= 1"):
        to_aoti(f, y, tmp_path / "bad.pt2", solver="rk4", steps=3, threads=0)
