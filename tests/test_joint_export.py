"""Joint-batch exports (``batch="joint"`` of ``to_onnx`` / ``to_torchscript`` /
``to_exported_program`` / ``to_aoti``): one step size and error norm for the whole batch, as
``odeserve.solve(batch="joint")`` and torchdiffeq step it.

Each exported file is loaded as a user loads it and compared on fresh batches (not the
parity gate's) with the public eager ``odeserve.solve(..., batch="joint")``: states, status
and the step count, which in joint mode is one number repeated for every sample.  A
per-sample export of the same batch takes different step counts per sample, so a file that
silently stepped per sample (or a joint file that froze the example's batch size) fails.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from odeserve import InvalidOptionError, solve
from odeserve.export import (
    OnnxModel,
    TorchScriptDeprecationWarning,
    read_artifact_metadata,
    read_metadata,
    to_exported_program,
    to_onnx,
    to_torchscript,
)

try:
    from .problems import TimeConcatMLP
except ImportError:
    from problems import TimeConcatMLP

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

RTOL, ATOL = 1e-5, 1e-7
BATCHES = (1, 5, 64)


# float64: step counts are compared exactly, and in float32 a borderline accept or a last
# sliver of a step can flip with the rounding of a different batch size or runtime.
F = TimeConcatMLP(hidden=16, weight_scale=2.0).double().eval().requires_grad_(False)


def _y(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


def _eager(y: torch.Tensor, batch: str) -> Any:
    with torch.no_grad():
        return solve(F, y, [0.0, 1.0], solver="dopri5", rtol=RTOL, atol=ATOL, batch=batch)


def _check(run: Any, label: str) -> None:
    """``run(y) -> (y1, status, n_steps)`` against the eager joint solve on fresh batches."""
    for b in BATCHES:
        y = _y(b, 40 + b)
        sol = _eager(y, "joint")
        y1, status, n_steps = run(y)
        assert y1.shape == (b, 2)
        err = float((y1 - sol.ys[-1]).abs().max())
        assert err <= 1e-9, (label, b, err)
        assert torch.equal(status, torch.zeros(b, dtype=status.dtype)), (label, b, status)
        steps = int(sol.stats["steps"])
        assert torch.equal(n_steps, torch.full((b,), steps, dtype=n_steps.dtype)), (label, b, n_steps, steps)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("joint")
    return {batch: to_onnx(F, _y(8, 0), folder / f"{batch}.onnx", solver="dopri5", rtol=RTOL, atol=ATOL, batch=batch)
            for batch in ("joint", "per_sample")}


def test_onnx_joint_steps_the_batch_as_one(onnx_files: dict[str, Any]) -> None:
    r = onnx_files["joint"]
    assert max(r.parity.values()) <= 1e-9 and {"batch 1", "batch 7", "batch 256"} <= set(r.parity)
    assert read_metadata(r.path)["batch_mode"] == "joint"
    assert read_metadata(onnx_files["per_sample"].path)["batch_mode"] == "per_sample"
    model = OnnxModel(r.path)

    def run(y: torch.Tensor) -> Any:
        out = model.run(y.numpy())
        return (torch.from_numpy(out["y1"]), torch.from_numpy(out["status"]), torch.from_numpy(out["n_steps"]))

    _check(run, "onnx")


def test_joint_and_per_sample_files_differ_as_their_eager_solves_do(onnx_files: dict[str, Any]) -> None:
    y = _y(64, 7)
    joint = OnnxModel(onnx_files["joint"].path).run(y.numpy())
    per = OnnxModel(onnx_files["per_sample"].path).run(y.numpy())
    per_eager = _eager(y, "per_sample")
    np.testing.assert_array_equal(per["n_steps"], per_eager.stats["steps"].numpy())
    assert len(set(per["n_steps"].tolist())) > 1  # this batch needs different step counts per sample
    assert len(set(joint["n_steps"].tolist())) == 1
    # In joint mode a sample's steps depend on its batch: the easiest sample alone takes its
    # own (fewer) steps, as the eager joint solve of it alone does.
    i = int(np.argmin(per["n_steps"]))
    alone = OnnxModel(onnx_files["joint"].path).run(y[i:i + 1].numpy())
    assert int(alone["n_steps"][0]) == int(_eager(y[i:i + 1], "joint").stats["steps"]) == int(per["n_steps"][i])
    assert int(alone["n_steps"][0]) < int(joint["n_steps"][0])


def test_exported_program_and_torchscript_joint(tmp_path: Path) -> None:
    pt2 = to_exported_program(F, _y(4, 0), tmp_path / "joint.pt2", solver="dopri5", rtol=RTOL, atol=ATOL,
                              batch="joint", parity_batches=BATCHES)
    assert read_artifact_metadata(pt2.path)["batch_mode"] == "joint"
    program = torch.export.load(str(pt2.path)).module()
    with torch.no_grad():
        _check(lambda y: program(y), "pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TorchScriptDeprecationWarning)
        ts = to_torchscript(F, _y(4, 0), tmp_path / "joint.pt", solver="dopri5", rtol=RTOL, atol=ATOL,
                            batch="joint", parity_batches=BATCHES)
    script = torch.jit.load(str(ts.path))
    with torch.no_grad():
        _check(lambda y: script(y), "torchscript")


def tuple_f(t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A coupled tuple state ``(x (B, 2), v (B, 3))``; ``t`` 0-d or per sample."""
    x, v = state
    return torch.tanh(x) * v[:, :2] + t.reshape(-1, 1), -v * torch.sin(x.sum(1, keepdim=True))


def test_onnx_joint_tuple_state_with_output_times_as_inputs(tmp_path: Path) -> None:
    def state(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _y(b, seed), torch.randn(b, 3, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)

    r = to_onnx(tuple_f, state(5, 0), tmp_path / "tuple.onnx", solver="dopri5", rtol=1e-6, atol=1e-8,
                output_times=[0.0, 0.3, 0.7, 1.0], dynamic_times=True, batch="joint", parity_batches=(1, 7))
    assert max(r.parity.values()) <= 1e-9 and "shifted times" in r.parity
    y, ts = state(6, 9), [0.0, 0.2, 0.5, 1.5]
    out = OnnxModel(r.path).run(*(c.numpy() for c in y), t=np.array(ts))
    with torch.no_grad():
        sol = solve(tuple_f, y, ts, solver="dopri5", rtol=1e-6, atol=1e-8, batch="joint")
    for name, want in zip(("ys_0", "ys_1"), sol.ys):
        assert out[name].shape == (4, 6, want.shape[-1])
        assert np.abs(out[name] - want.numpy()).max() <= 1e-9, name
    assert (out["n_steps"] == int(sol.stats["steps"])).all()


def test_onnx_joint_unrolled_fixed_steps(tmp_path: Path) -> None:
    r = to_onnx(F, _y(4, 0), tmp_path / "rk4.onnx", solver="rk4", steps=4, mode="unrolled", batch="joint")
    y = _y(9, 5)
    got = OnnxModel(r.path)(y.numpy())
    with torch.no_grad():
        want = solve(F, y, [0.0, 1.0], solver="rk4", steps=4, batch="joint").ys[-1]
    assert np.abs(got - want.numpy()).max() <= 1e-12


@pytest.mark.slow
def test_aoti_adaptive_joint_batch(tmp_path: Path) -> None:
    """An adaptive joint loop as an AOTInductor package (its start time is a 0-d tensor
    constant, which Inductor must keep a buffer to carry it into the while loop)."""
    from odeserve.export import load_aoti, to_aoti

    r = to_aoti(F, _y(4, 0), tmp_path / "joint.pt2", solver="dopri5", rtol=RTOL, atol=ATOL, batch="joint",
                dynamic_batch=True, parity_batches=(2, 5, 64), progress=False)
    assert read_artifact_metadata(r.path)["batch_mode"] == "joint"
    model = load_aoti(r.path)
    for b in (2, 5, 64):  # a dynamic batch axis starts at 2 (PyTorch's shape specialisation)
        y = _y(b, 40 + b)
        sol = _eager(y, "joint")
        y1, status, n_steps = model(y)
        assert float((y1 - sol.ys[-1]).abs().max()) <= 1e-9
        assert torch.equal(status, torch.zeros(b, dtype=status.dtype))
        assert torch.equal(n_steps, torch.full((b,), int(sol.stats["steps"]), dtype=n_steps.dtype))


def test_unknown_batch_mode_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "x.onnx"
    with pytest.raises(InvalidOptionError, match=r"batch must be one of \('joint', 'per_sample'\), got 'rows'"):
        to_onnx(F, _y(4, 0), path, solver="dopri5", batch="rows")
    assert not path.exists()


def make_model() -> nn.Module:
    """The factory the CLI test loads (``test_joint_export:make_model``)."""
    return TimeConcatMLP(hidden=16, weight_scale=2.0)


def test_cli_batch_mode_and_controller(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from odeserve.cli import main

    out = tmp_path / "joint.onnx"
    assert main(["export", "test_joint_export:make_model", "--state-shape", "2", "--batch", "6", "--solver", "dopri5",
                 "--rtol", "1e-5", "--atol", "1e-7", "--dtype", "float64", "--batch-mode", "joint",
                 "--controller", "i", "--parity-batches", "1,7", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = read_metadata(out)
    assert (meta["batch_mode"], meta["controller"]) == ("joint", "i")
    y = _y(5, 3)
    got = OnnxModel(out).run(y.numpy())
    with torch.no_grad():
        sol = solve(F, y, [0.0, 1.0], solver="dopri5", rtol=RTOL, atol=ATOL, batch="joint", controller="i")
    assert np.abs(got["y1"] - sol.ys[-1].numpy()).max() <= 1e-9
    assert (got["n_steps"] == int(sol.stats["steps"])).all()
