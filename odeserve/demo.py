"""``odeserve demo``: the article's worked example end to end.

1. Data: trajectories of a point in the plane under the damped cubic spiral
   ``dz/dt = A z³`` (elementwise cube), ``A = [[-0.1, 2], [-2, -0.1]]``.
2. Train a neural ODE ``f(t, z)`` (an MLP on ``concat(t, z)``) on windows of them with the
   adjoint sensitivity and dopri5; the loss is printed as it falls.
3. Export the trained model to ONNX as a fixed-step RK4 ``Loop`` whose step count is chosen
   automatically to match the adaptive solve, check parity in ONNX Runtime and time eager
   adaptive, eager fixed, ``torch.compile`` and ONNX Runtime at batch 1 and 256.
4. Plots: true vs learned trajectories and vector field, a tangent at z(t0) pushed forward
   along the flow (JVP), a cotangent at z(t1) pulled back along it (VJP), the loss curve.

Everything is written under ``--out``; a Ctrl-C leaves no half-written file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ._api import solve
from ._jvp import jvp
from .errors import OdeserveError

__all__ = ["MLPField", "spiral", "run", "add_arguments"]

TRUE_A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])


class MLPField(nn.Module):
    """``f(t, z) = MLP(concat(t, z))``: the article's vector field, tanh hidden layers.
    ``t`` may be 0-d (joint batch) or ``(batch,)`` (per-sample time, as exported)."""

    def __init__(self, dim: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, dim)
        )

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        tt = t.reshape(-1, 1).expand(z.shape[0], 1)
        return self.net(torch.cat([tt, z], dim=-1))


def spiral(t: Tensor, z: Tensor) -> Tensor:
    """The true dynamics: ``dz/dt = (z³) Aᵀ``."""
    return (z**3) @ TRUE_A.to(z).T


class Progress:
    """A one-line progress bar on stderr (no dependency)."""

    def __init__(self, total: int, width: int = 30) -> None:
        self.total, self.width, self.start = total, width, time.perf_counter()

    def update(self, i: int, text: str) -> None:
        done = int(self.width * i / self.total)
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(i, 1) * (self.total - i)
        sys.stderr.write(f"\r  [{'#' * done}{'.' * (self.width - done)}] {i}/{self.total} {text} eta {eta:4.0f}s")
        sys.stderr.flush()
        if i == self.total:
            sys.stderr.write("\n")


def _atomic_save(write: Callable[[Path], None], path: Path) -> None:
    """Write through a temporary file and rename: an interrupt leaves no partial file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OdeserveError(f"cannot write to --out {str(out)!r}: {e.strerror or e}; choose a writable folder") from None
    return out


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2]


def make_data(n_points: int, t1: float, device: torch.device) -> tuple[Tensor, Tensor]:
    t = torch.linspace(0.0, t1, n_points, device=device)
    z0 = torch.tensor([[2.0, 0.0]], device=device)
    with torch.no_grad():
        zs = solve(spiral, z0, t, solver="dopri5", rtol=1e-8, atol=1e-10).ys[:, 0]  # (T, 2)
    return t, zs


def train(
    f: MLPField, t: Tensor, zs: Tensor, *, epochs: int, window: int, batch: int, lr: float, seed: int
) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(f.parameters(), lr=lr)
    params = tuple(f.parameters())
    losses: list[float] = []
    bar = Progress(epochs)
    tw = t[:window] - t[0]
    for i in range(1, epochs + 1):
        starts = torch.randint(0, t.shape[0] - window, (batch,), generator=gen)
        z0 = zs[starts]  # (batch, 2)
        target = torch.stack([zs[starts + k] for k in range(window)])  # (window, batch, 2)
        pred = solve(
            f, z0, tw, solver="dopri5", rtol=1e-5, atol=1e-6,
            sensitivity="adjoint", sensitivity_options={"adjoint_params": params},
        ).ys
        loss = (pred - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.update(i, f"loss {losses[-1]:.4f}")
    return losses


def _plots(out: Path, f: MLPField, t: Tensor, zs: Tensor, losses: list[float]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out / name
        _atomic_save(lambda p: fig.savefig(p, format="png", dpi=110), path)
        plt.close(fig)
        written.append(path)

    z0 = zs[:1]
    with torch.no_grad():
        learned = solve(f, z0, t, solver="dopri5", rtol=1e-6, atol=1e-8).ys[:, 0]
    fig, ax = plt.subplots(1, 2, figsize=(11, 5))
    ax[0].plot(zs[:, 0], zs[:, 1], "k-", lw=2, label="true")
    ax[0].plot(learned[:, 0], learned[:, 1], "r--", lw=1.5, label="learned")
    ax[0].set_title("trajectories in the plane")
    ax[0].legend()
    g = torch.linspace(-2.2, 2.2, 21)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)
    with torch.no_grad():
        v = f(torch.zeros(()), pts)
    ax[1].quiver(pts[:, 0], pts[:, 1], v[:, 0], v[:, 1], color="tab:blue")
    ax[1].plot(learned[:, 0], learned[:, 1], "r-", lw=1)
    ax[1].set_title("learned vector field f(0, z)")
    save(fig, "trajectories.png")

    # JVP: a tangent at z(t0) pushed forward along the flow.
    idx = torch.linspace(0, t.shape[0] - 1, 12).long()
    tt = t[idx]
    fig, ax = plt.subplots(figsize=(6, 6))
    with torch.no_grad():
        for tangent, colour in ((torch.tensor([[0.3, 0.0]]), "tab:green"), (torch.tensor([[0.0, 0.3]]), "tab:purple")):
            ys, ts = jvp(f, z0, tt, tangent, solver="dopri5", rtol=1e-6, atol=1e-8)
            ax.quiver(ys[:, 0, 0], ys[:, 0, 1], ts[:, 0, 0], ts[:, 0, 1], color=colour, angles="xy",
                      scale_units="xy", scale=1, width=0.005, label=f"v = {tuple(tangent[0].tolist())}")
        ax.plot(learned[:, 0], learned[:, 1], "r-", lw=1, label="learned trajectory")
    ax.legend(loc="upper right")
    ax.set_title("JVP: tangents at z(t0) pushed forward (∂z(t)/∂z(t0)·v)")
    save(fig, "jvp_pushforward.png")

    # VJP: a cotangent u at z(t1) pulled back to z(s) along the trajectory.
    fig, ax = plt.subplots(figsize=(6, 6))
    t1 = t[-1]
    for u, colour in ((torch.tensor([[1.0, 0.0]]), "tab:orange"), (torch.tensor([[0.0, 1.0]]), "tab:cyan")):
        starts, pulls = [], []
        for k in idx[:-1].tolist():
            zk = learned[k : k + 1].clone().requires_grad_(True)
            zt1 = solve(f, zk, torch.stack([t[k], t1]), solver="dopri5", rtol=1e-6, atol=1e-8,
                        sensitivity="adjoint").ys[-1]
            (g_z,) = torch.autograd.grad((zt1 * u).sum(), zk)
            starts.append(learned[k])
            pulls.append(g_z[0])
        s, p = torch.stack(starts).detach(), torch.stack(pulls).detach()
        p = 0.3 * p / p.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        ax.quiver(s[:, 0], s[:, 1], p[:, 0], p[:, 1], color=colour, angles="xy", scale_units="xy", scale=1, width=0.005,
                  label=f"u = {tuple(u[0].tolist())}")
    ax.plot(learned[:, 0], learned[:, 1], "r-", lw=1, label="learned trajectory")
    ax.legend(loc="upper right")
    ax.set_title("VJP: uᵀ∂z(t1)/∂z(s) pulled back (direction)")
    save(fig, "vjp_pullback.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(losses)
    ax.set_xlabel("iteration")
    ax.set_ylabel("mean |z_pred − z_true|")
    ax.set_title("training loss")
    save(fig, "loss.png")
    return written


def _deploy(out: Path, f: MLPField, t1: float, quick: bool) -> dict[str, Any]:
    from odeserve.export import OnnxModel, compile_solve, to_onnx

    example = torch.randn(8, 2)
    tol = 1e-3 if quick else 1e-4
    exp = to_onnx(f, example, out / "model.onnx", solver="rk4", t0=0.0, t1=t1, steps="auto", rtol=tol, mode="loop")
    steps = exp.steps
    model = OnnxModel(exp.path, threads=1)
    results: dict[str, Any] = {"onnx": str(exp.path), "steps": steps, "parity": exp.parity,
                               "export_seconds": round(exp.export_seconds, 1)}
    span = torch.tensor([0.0, t1])
    # torch.compile costs a minute or two of compiling on a small CPU: skipped by --quick.
    compiled = None if quick else compile_solve(f, solver="rk4", t0=0.0, t1=t1, steps=steps)
    rows = []
    repeats = 3 if quick else 10
    for batch in (1, 256):
        y0 = torch.randn(batch, 2)
        with torch.no_grad():
            ref = solve(f, y0, span, solver="dopri5", rtol=1e-7, atol=1e-9).ys[-1]
            ort_y = torch.as_tensor(model(y0.numpy()))
            err = float((ort_y - ref).abs().max())
            timings = {
                "eager dopri5 (adaptive)": _median_ms(lambda: solve(f, y0, span, solver="dopri5", rtol=tol, atol=tol * 1e-2), repeats),
                f"eager rk4 ({steps} steps)": _median_ms(lambda: solve(f, y0, span, solver="rk4", steps=steps), repeats),
                "torch.compile rk4": _median_ms(lambda: compiled(y0), repeats) if compiled else float("nan"),
                "ONNX Runtime rk4 Loop": _median_ms(lambda: model(y0.numpy()), repeats),
            }
        rows.append({"batch": batch, "onnx_vs_adaptive_max_error": err, "ms": timings})
    results["latency"] = rows
    return results


def run(out: str | Path, *, epochs: int | None = None, device: str = "cpu", quick: bool = False, seed: int = 0) -> dict[str, Any]:
    """The demo as a function (the CLI calls this); returns what it measured."""
    out_dir = _check_out(Path(out))
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OdeserveError("--device cuda: no CUDA device is available here; use --device cpu")
    torch.manual_seed(seed)
    # A 2-64-64-2 MLP at batch 32 runs fastest on one thread; more threads only add
    # synchronisation (and, on a busy machine, spin-waiting: 5 s per iteration measured
    # with 2 threads under load vs 0.6 s with one).
    torch.set_num_threads(1)
    t1 = 10.0
    t, zs = make_data(100 if quick else 200, t1, dev)
    f = MLPField().to(dev)
    epochs = epochs if epochs is not None else (30 if quick else 400)
    print(f"odeserve demo: training a neural ODE on the cubic spiral ({epochs} iterations, adjoint, dopri5)")
    start = time.perf_counter()
    losses = train(f, t, zs, epochs=epochs, window=10, batch=16 if quick else 32, lr=1e-2, seed=seed)
    train_s = time.perf_counter() - start
    print(f"  loss {losses[0]:.4f} -> {losses[-1]:.4f} in {train_s:.0f} s")
    f = f.cpu().eval()
    _atomic_save(lambda p: torch.save(f.state_dict(), p), out_dir / "model.pt")
    print("exporting to ONNX (RK4 Loop, step count chosen to match the adaptive solve) ...")
    deploy = _deploy(out_dir, f, t1 if not quick else 2.0, quick)
    print(f"  {deploy['onnx']}: {deploy['steps']} steps, parity vs eager {max(deploy['parity'].values()):.2e}, "
          f"exported in {deploy['export_seconds']} s")
    names = list(deploy["latency"][0]["ms"])
    print(f"\n  {'runtime':<28}" + "".join(f"{'batch ' + str(r['batch']):>12}" for r in deploy["latency"]))
    for name in names:
        print(f"  {name:<28}" + "".join(f"{r['ms'][name]:>10.2f}ms" for r in deploy["latency"]))
    print("  ONNX vs tight adaptive solve, max |error|: "
          + ", ".join(f"batch {r['batch']}: {r['onnx_vs_adaptive_max_error']:.1e}" for r in deploy["latency"]))
    plots = _plots(out_dir, f, t.cpu(), zs.cpu(), losses)
    summary = {"losses": [losses[0], losses[-1]], "train_seconds": train_s, **deploy,
               "plots": [str(p) for p in plots]}
    _atomic_save(lambda p: p.write_text(json.dumps(summary, indent=2, default=str)), out_dir / "summary.json")
    print(f"\nplots and model written to {out_dir.resolve()}/: " + ", ".join(p.name for p in plots))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="folder for the model, ONNX file and plots (default: demo_out)")
    parser.add_argument("--epochs", type=int, default=None, help="training iterations (default 400; 30 with --quick)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (training device; default cpu)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (used by the tests)")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    run(args.out, epochs=args.epochs, device=args.device, quick=args.quick, seed=args.seed)
    return 0
