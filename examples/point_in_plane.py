"""The article's worked example, in plain steps: a point moving in the plane.

1. ``f(t, z)`` is a small MLP on ``concat(t, z)`` (3 → 5 → 2, LeakyReLU then Tanh), its
   parameters made explicit arguments with ``torch.func.functional_call`` (what the
   article's delete-and-reset-attributes trick does by hand).
2. Solve ``z`` forward from t0 to t1 with RK4.
3. The adjoint by hand: solve the *tuple* state ``(z, a, a_θ)`` backwards with the same RK4,
   ``d/dt [z, a, a_θ] = [f, −aᵀ∂f/∂z, −aᵀ∂f/∂θ]`` — both products from one VJP of f —
   and compare ``a(t0)``, ``a_θ(t0)`` with autograd's gradient.
4. Pushforward of a tangent at z(t0) along the flow (JVP, ``odeserve.jvp``) and pullback of
   a cotangent at z(t1) to z(t0) and θ (VJP, ``sensitivity="adjoint"``).

Run: ``python examples/point_in_plane.py [--plot out.png]``.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.func import functional_call, vjp

import odeserve

torch.set_default_dtype(torch.float64)
torch.manual_seed(0)


class Field(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 5), nn.LeakyReLU(), nn.Linear(5, 2), nn.Tanh())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([t.reshape(-1, 1).expand(z.shape[0], 1), z], dim=-1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", help="write the JVP/VJP picture to this PNG file")
    args = parser.parse_args()

    f = Field()
    params = dict(f.named_parameters())
    names = list(params)
    z0 = torch.tensor([[1.0, 0.5]])
    t0, t1, steps = 0.0, 2.0, 50
    t = torch.tensor([t0, t1])

    # 2. forward solve
    z1 = odeserve.solve(f, z0, t, solver="rk4", steps=steps).ys[-1]
    print("z(t1) =", z1.tolist())

    # 3. the adjoint by hand, as a tuple-state RK4 solve backwards from t1 to t0
    loss_grad = 2 * z1.detach()  # L = |z(t1)|², a(t1) = ∂L/∂z(t1)
    flat = lambda p: torch.cat([x.reshape(-1) for x in p])  # noqa: E731

    def augmented(tt: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        z, a, _ = state
        values = [params[n].detach() for n in names]

        def f_of(z_: torch.Tensor, *ps: torch.Tensor) -> torch.Tensor:
            return functional_call(f, dict(zip(names, ps)), (tt, z_))

        dz, pullback = vjp(f_of, z, *values)
        a_z, *a_p = pullback(a)  # one VJP gives both aᵀ∂f/∂z and aᵀ∂f/∂θ
        return dz, -a_z, -flat(a_p)

    n_params = sum(p.numel() for p in params.values())
    back = odeserve.solve(
        augmented, (z1.detach(), loss_grad, torch.zeros(n_params)), torch.tensor([t1, t0]), solver="rk4", steps=steps
    )
    a0, a_theta0 = back.ys[1][-1], back.ys[2][-1]

    z0_ = z0.clone().requires_grad_(True)
    z1_auto = odeserve.solve(f, z0_, t, solver="rk4", steps=steps).ys[-1]
    grads = torch.autograd.grad((z1_auto**2).sum(), [z0_, *params.values()])
    print("adjoint by hand vs autograd: |Δ dL/dz0| = %.1e, |Δ dL/dθ| = %.1e" % (
        (a0 - grads[0]).abs().max(), (a_theta0 - flat(grads[1:])).abs().max()))

    # 4. JVP pushforward and VJP pullback through odeserve's own plugins
    ts = torch.linspace(t0, t1, 9)
    v = torch.tensor([[0.2, 0.0]])
    ys, tangents = odeserve.jvp(f, z0, ts, v, solver="rk4", steps=steps)
    print("tangent (0.2, 0) pushed forward to t1:", tangents[-1].tolist())
    u = torch.tensor([[1.0, 0.0]])
    z0_ = z0.clone().requires_grad_(True)
    zt1 = odeserve.solve(f, z0_, t, solver="rk4", steps=steps, sensitivity="adjoint").ys[-1]
    pulled_z0, *pulled_theta = torch.autograd.grad((zt1 * u).sum(), [z0_, *params.values()])
    print("cotangent (1, 0) at z(t1) pulled back to z(t0):", pulled_z0.tolist())
    print("                         ... and to θ, norm:", float(flat(pulled_theta).norm()))
    print("consistency ⟨u, J v⟩ = ⟨Jᵀu, v⟩:", float((u * tangents[-1]).sum().detach()), float((pulled_z0 * v).sum()))

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 6))
        ax.plot(ys[:, 0, 0].detach(), ys[:, 0, 1].detach(), "k.-", label="z(t)")
        ax.quiver(ys[:, 0, 0].detach(), ys[:, 0, 1].detach(), tangents[:, 0, 0].detach(), tangents[:, 0, 1].detach(),
                  color="tab:green", angles="xy", scale_units="xy", scale=1, label="pushforward of v")
        ax.quiver(z0[0, 0], z0[0, 1], pulled_z0[0, 0], pulled_z0[0, 1], color="tab:orange", angles="xy",
                  scale_units="xy", scale=5, label="pullback of u to z(t0)")
        ax.legend()
        fig.savefig(args.plot)
        print("wrote", args.plot)


if __name__ == "__main__":
    main()
