"""The example scripts run and say what they claim."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_point_in_plane_adjoint_by_hand_matches_autograd_and_jvp_vjp_agree() -> None:
    out = run("point_in_plane.py")
    m = re.search(r"\|Δ dL/dz0\| = ([\d.e+-]+), \|Δ dL/dθ\| = ([\d.e+-]+)", out)
    assert m and float(m.group(1)) < 1e-9 and float(m.group(2)) < 1e-9, out
    lhs, rhs = map(float, re.search(r"⟨Jᵀu, v⟩: (\S+) (\S+)", out).groups())
    assert abs(lhs - rhs) < 1e-9 * max(1.0, abs(lhs))


def test_solver_table_lists_every_registered_solver() -> None:
    import odeserve

    out = run("solver_table.py")
    for name in odeserve.get_registry().entries("solver"):
        assert re.search(rf"^{name}\s", out, re.M), name


def test_torchdiffeq_migration_gives_torchdiffeq_losses() -> None:
    pytest.importorskip("torchdiffeq")
    out = run("torchdiffeq_migration.py", "--steps", "5")
    rows = [line.split() for line in out.splitlines() if re.match(r"\s*\d+\s", line)]
    assert len(rows) == 5
    for _, ours, theirs in rows:
        assert abs(float(ours) - float(theirs)) <= 1e-4
