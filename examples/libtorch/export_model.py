"""Write a TorchScript file for the LibTorch example and print the eager solution it must match.

    python examples/libtorch/export_model.py model.pt [--solver dopri5] [--batch 4]
    examples/libtorch/build/solve_ode model.pt 4      # prints the same numbers from C++

The model is a small time-concatenated MLP ``f(t, y)`` (2 → 32 → 2, tanh), the input batch
``y0[i, j] = linspace(-1, 1, batch·2)[2i + j]`` — the batch ``main.cpp`` builds.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn

import odeserve
from odeserve.export import TorchScriptDeprecationWarning, to_torchscript


class TimeMLP(nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, dim)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, 1).to(y.dtype).expand(y.shape[0], 1)
        return self.l2(torch.tanh(self.l1(torch.cat([y, tt], dim=1))))


def example_batch(batch: int, dim: int = 2) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, batch * dim).reshape(batch, dim)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="the .pt file to write")
    ap.add_argument("--solver", default="dopri5")
    ap.add_argument("--steps", type=int, default=50, help="fixed-step solvers")
    ap.add_argument("--rtol", type=float, default=1e-6, help="adaptive solvers")
    ap.add_argument("--batch", type=int, default=4)
    args = ap.parse_args()

    f = TimeMLP().eval()
    adaptive = odeserve.get_registry().solver(args.solver).adaptive
    settings = dict(rtol=args.rtol, atol=1e-8) if adaptive else dict(steps=args.steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TorchScriptDeprecationWarning)  # this example is about TorchScript
        result = to_torchscript(f, example_batch(3), args.path, solver=args.solver, **settings)
    print(f"wrote {result.path} ({result.size_bytes / 1024:.1f} KiB), parity error {result.metadata['parity_error']:.2g}")

    y0 = example_batch(args.batch)
    with torch.no_grad():
        sol = odeserve.solve(f, y0, [0.0, 1.0], solver=args.solver, batch="per_sample", **settings)
    print("eager odeserve.solve on the batch solve_ode builds:")
    for i, row in enumerate(sol.ys[-1].tolist()):
        print(f"y1[{i}] = " + " ".join(f"{v:.8g}" for v in row))


if __name__ == "__main__":
    main()
