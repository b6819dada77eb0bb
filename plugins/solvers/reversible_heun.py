"""Reversible Heun: order 2, one f evaluation per step, fixed step, algebraically reversible.

Reference: P. Kidger, J. Foster, X. Li, T. Lyons, Efficient and Accurate Gradients for Neural
SDEs, NeurIPS 2021, §3 (the reversible Heun method; here its ODE case, zero noise).
"""

from __future__ import annotations

import torch
from torch import Tensor

from odeserve.solver import RHS, Const, Solver, StepResult

__all__ = ["ReversibleHeun"]


class ReversibleHeun(Solver):
    """Reversible Heun: order 2, one f evaluation per step, fixed step, not embedded, not FSAL
    in the tableau sense (it carries its own derivative instead).

    The method carries ``(y_n, ŷ_n, f(t_n, ŷ_n))`` and steps

        ŷ_{n+1} = 2 y_n − ŷ_n + Δt f(t_n, ŷ_n)
        y_{n+1} = y_n + Δt/2 (f(t_n, ŷ_n) + f(t_{n+1}, ŷ_{n+1}))

    Solving these for the start gives the same formulas with ``−Δt`` from ``t_{n+1}``, so
    :meth:`backward_step` reconstructs the start state exactly (up to rounding) from the end
    state: the ``reversible`` sensitivity back-propagates with O(1) memory and still gets the
    gradient of the discretised solve.  The loop state is ``[y, ŷ, f(ŷ)]`` concatenated on
    the last axis (:meth:`augment` / :meth:`project`).
    """

    order = 2
    adaptive = False
    evals_per_step = 1
    reversible = True

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(dtype, device)
        self._half = Const(0.5, dtype, device)

    def augment(self, rhs: RHS, t0: Tensor, y0: Tensor) -> Tensor:
        return torch.cat([y0, y0, rhs(t0, y0)], dim=-1)

    def step(self, rhs: RHS, t: Tensor, y: Tensor, dt: Tensor, f0: Tensor | None) -> StepResult:
        z, z_hat, f_hat = torch.chunk(y, 3, dim=-1)
        z_hat_new = torch.addcmul(z + z - z_hat, dt, f_hat)
        f_new = rhs(t + dt, z_hat_new)
        z_new = torch.addcmul(z, dt * self._half(), f_hat + f_new)
        return StepResult(torch.cat([z_new, z_hat_new, f_new], dim=-1), None, (), None, (f_hat, f_new))

    def backward_step(self, rhs: RHS, t1: Tensor, state1: Tensor, dt: Tensor) -> Tensor:
        """The loop state at ``t1 − dt`` from the state at ``t1`` (``dt`` is the forward step)."""
        return self.step(rhs, t1, state1, -dt, None).y
