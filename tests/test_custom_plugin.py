"""The third-party plugin package in examples/custom_solver_plugin, installed for real into a
temporary virtual environment that sees this one's packages."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "examples" / "custom_solver_plugin"


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("plugin_venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # See this environment's packages (odeserve, torch, ...) with their own .pth files
    # processed, so the plugin installs on top of exactly what the tests run against.
    site_dir = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    parents = [p for p in sys.path if p.endswith("site-packages")]
    Path(site_dir, "_parent_env.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in parents)
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-build-isolation",
         str(PLUGIN)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return py


def test_odeserve_plugins_lists_the_installed_solver(venv_python: Path) -> None:
    out = subprocess.run([str(venv_python), "-m", "odeserve", "plugins"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    line = next(row for row in out.stdout.splitlines() if row.split()[:2] == ["solver", "ssprk3"])
    assert "3" in line.split()[2]
    assert "odeserve-ssprk3 0.1.0" in line


def test_installed_solver_hits_its_order_and_exports_with_parity(venv_python: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, math, torch, odeserve
        from odeserve.export import to_onnx
        torch.set_default_dtype(torch.float64)
        A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
        f = lambda t, y: y @ A.T
        y0 = torch.tensor([[1.0, 0.0]])
        t = torch.tensor([0.0, 2.0])
        exact = torch.tensor([[math.cos(2.0), -math.sin(2.0)]])
        ns = [20, 40, 80, 160]
        errs = [float((odeserve.solve(f, y0, t, solver="ssprk3", steps=n).ys[-1] - exact).abs().max()) for n in ns]
        slope = -(math.log(errs[-1]) - math.log(errs[0])) / (math.log(ns[-1]) - math.log(ns[0]))
        class F(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(2, 2)
            def forward(self, t, y):
                return torch.tanh(self.lin(y))
        exp = to_onnx(F().double(), torch.randn(3, 2), {str(tmp_path / "m.onnx")!r}, solver="ssprk3",
                      t0=0.0, t1=1.0, steps=8, mode="loop", parity_batches=(1, 5))
        print(json.dumps({{"slope": slope, "parity": max(exp.parity.values())}}))
        """
    )
    out = subprocess.run([str(venv_python), "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert abs(result["slope"] - 3.0) < 0.2
    assert result["parity"] < 1e-10
