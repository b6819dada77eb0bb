"""The same neural ODE on torchdiffeq and on odeserve: the switch is the import line.

    from torchdiffeq import odeint_adjoint as odeint        # before
    from odeserve.compat import odeint_adjoint as odeint    # after

Both train the same model for a few steps from the same seed and print their losses; then
the odeserve model goes on to what torchdiffeq cannot do: a whole-solve ONNX export.
Run: ``python examples/torchdiffeq_migration.py [--export model.onnx]``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


class ODEFunc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 50), nn.Tanh(), nn.Linear(50, 2))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y**3)


def train(odeint, steps: int = 20) -> list[float]:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    true_a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    t = torch.linspace(0.0, 5.0, 50)
    y0 = torch.tensor([[2.0, 0.0]])
    with torch.no_grad():
        true_y = odeint(lambda t, y: (y**3) @ true_a, y0, t, method="dopri5", adjoint_params=())
    func = ODEFunc()
    opt = torch.optim.RMSprop(func.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        pred_y = odeint(func, y0, t, method="dopri5", rtol=1e-6, atol=1e-8)
        loss = (pred_y - true_y).abs().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="also export the odeserve-trained solve to this ONNX file")
    parser.add_argument("--steps", type=int, default=20, help="training steps per library (default 20)")
    args = parser.parse_args()

    from odeserve.compat import odeint_adjoint as odeserve_odeint

    ours = train(odeserve_odeint, args.steps)
    try:
        from torchdiffeq import odeint_adjoint as torchdiffeq_odeint
    except ImportError:
        print("torchdiffeq is not installed: showing odeserve only")
        theirs = None
    else:
        theirs = train(torchdiffeq_odeint, args.steps)
    print(f"{'step':>4} {'odeserve':>10} {'torchdiffeq':>12}")
    for i, loss in enumerate(ours):
        print(f"{i:>4} {loss:>10.5f} {theirs[i] if theirs else float('nan'):>12.5f}")
    if args.export:
        from odeserve.export import to_onnx

        exp = to_onnx(ODEFunc(), torch.randn(4, 2), args.export, solver="dopri5", t0=0.0, t1=1.0, rtol=1e-5, atol=1e-7)
        print(f"exported {exp.path} (parity {max(exp.parity.values()):.1e})")


if __name__ == "__main__":
    main()
