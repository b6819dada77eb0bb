"""The main job must not rot: `odeserve demo --quick` runs end to end in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("onnxruntime")


def test_demo_quick_writes_model_onnx_plots_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "odeserve", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("model.pt", "model.onnx", "summary.json", "trajectories.png", "jvp_pushforward.png",
                 "vjp_pullback.png", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["losses"][1] < summary["losses"][0], "training did not reduce the loss"
    assert max(summary["parity"].values()) < 1e-4
    assert summary["steps"] >= 1
    assert "ONNX Runtime" in proc.stdout and "batch 256" in proc.stdout
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


def test_demo_refuses_an_unwritable_out_before_training(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "odeserve", "demo", "--quick", "--out", str(blocker / "sub")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "cannot write to --out" in proc.stderr
    assert "training" not in proc.stdout


def test_interrupted_save_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    from odeserve.demo import _atomic_save

    target = tmp_path / "model.pt"
    target.write_bytes(b"the previous model")

    def write_then_interrupt(p: Path) -> None:
        p.write_bytes(b"half a mod")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _atomic_save(write_then_interrupt, target)
    assert target.read_bytes() == b"the previous model"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.pt"]


def test_ctrl_c_during_training_exits_130_and_leaves_no_model_file(tmp_path: Path) -> None:
    import signal

    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "odeserve", "demo", "--quick", "--epochs", "100000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # A child inherits an ignored SIGINT (pytest-xdist workers ignore it), and Python then
        # installs no KeyboardInterrupt handler: give the demo the default, as a shell would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "training" in line, line
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert list(out.iterdir()) == [], "an interrupted demo left files behind"
