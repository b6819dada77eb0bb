"""Solve a small neural ODE with every registered solver and print a table.

A 2 → 32 → 2 MLP vector field f(t, z) on concat(t, z), batch of 16 points, t in [0, 1].
The reference is dopri8 at rtol 1e-12 in float64.
"""

from __future__ import annotations

import time

import torch
from torch import nn

import odeserve


class MLPField(nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, 1).expand(z.shape[0], 1)
        return self.net(torch.cat([tt, z], dim=-1))


def main() -> None:
    torch.manual_seed(0)
    f = MLPField().double()
    y0 = torch.randn(16, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with torch.no_grad():
        ref = odeserve.solve(f, y0, t, solver="dopri8", rtol=1e-12, atol=1e-14).ys[-1]
        print(f"{'solver':<11} {'order':>5} {'adaptive':>8} {'nfe':>5} {'steps':>5} {'max error':>10} {'ms':>7}")
        for name, entry in odeserve.get_registry().entries("solver").items():
            cls = entry.obj
            kw = {"rtol": 1e-6, "atol": 1e-8} if cls.adaptive else {"steps": 20}
            start = time.perf_counter()
            sol = odeserve.solve(f, y0, t, solver=name, **kw)
            ms = 1e3 * (time.perf_counter() - start)
            err = (sol.ys[-1] - ref).abs().max().item()
            steps = int(sol.stats["steps"])
            print(f"{name:<11} {cls.order:>5} {'yes' if cls.adaptive else 'no':>8} {sol.stats['nfe']:>5} {steps:>5} {err:>10.2e} {ms:>7.1f}")


if __name__ == "__main__":
    main()
