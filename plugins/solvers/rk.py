"""The one explicit Runge–Kutta stepper: every tableau-defined solver is this class plus data."""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import Tensor

from odeserve._interp import HermiteInterpolant
from odeserve.solver import RHS, Solver, StepResult
from odeserve.tableau import ButcherTableau

__all__ = ["ExplicitRK"]


class ExplicitRK(Solver):
    """Explicit Runge–Kutta method driven by ``tableau``.

    Stage ``i`` is ``f(t + c_i dt, y + dt Σ_j a_ij k_j)``; the weighted sum over stages is one
    matrix product of a coefficient row (a tensor of the state's dtype, made once) with the
    stacked stages, so a float64 graph never holds a coefficient rounded to float32.
    """

    tableau: ClassVar[ButcherTableau]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is None:
            return
        cls.order = tab.order
        cls.adaptive = tab.embedded
        cls.error_order = tab.error_order
        cls.fsal = tab.fsal
        cls.needs_f0 = tab.embedded
        # With f(t, y) of the step's start carried in, an adaptive step evaluates the
        # remaining stages plus f(t + dt, y_new) (the last stage itself when FSAL).
        if tab.embedded:
            cls.evals_per_step = tab.stages - 1 if tab.fsal else tab.stages
        else:
            cls.evals_per_step = tab.stages

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(dtype, device)
        tab = self.tableau

        def row(values: tuple[float, ...]) -> Tensor:
            return torch.tensor([list(values)], dtype=dtype, device=device)

        self._c = [self.const(ci) for ci in tab.c]
        self._a = [row(r) if r else None for r in tab.a]
        # Single-coefficient rows (RK4, midpoint, ...) skip the product: y + (a dt) k.
        self._a_single = [
            (len(r) - 1, self.const(r[-1])) if r and all(x == 0.0 for x in r[:-1]) else None for r in tab.a
        ]
        combos: list[tuple[float, ...]] = []
        if not tab.fsal:
            combos.append(tab.b)
        if tab.b_error is not None:
            combos.append(tab.b_error)
        if tab.b_error_aux is not None:
            combos.append(tab.b_error_aux)
        if tab.b_mid is not None:
            combos.append(tab.b_mid)
        self._final = torch.tensor([list(r) for r in combos], dtype=dtype, device=device) if combos else None
        self._n_err = (tab.b_error is not None) + (tab.b_error_aux is not None)
        self._hundredth = self.const(0.01)
        if tab.b_mid is not None:
            self._quartic = HermiteInterpolant(True, dtype, device)

    def _combine(self, weights: Tensor, ks: list[Tensor]) -> Tensor:
        n = weights.shape[-1]
        stacked = torch.stack(ks[:n]).reshape(n, -1)
        return (weights @ stacked).reshape((weights.shape[0],) + ks[0].shape)

    def step(self, rhs: RHS, t: Tensor, y: Tensor, dt: Tensor, f0: Tensor | None) -> StepResult:
        tab = self.tableau
        ks = [rhs(t, y) if f0 is None else f0]
        y_stage = y
        for i in range(1, tab.stages):
            single = self._a_single[i]
            if single is not None:
                j, coef = single
                y_stage = torch.addcmul(y, dt * coef, ks[j])
            else:
                y_stage = torch.addcmul(y, dt, self._combine(self._a[i], ks)[0])
            ks.append(rhs(torch.addcmul(t, self._c[i], dt), y_stage))
        outs = self._combine(self._final, ks) if self._final is not None else None
        pos = 0
        if tab.fsal:
            y_new, f_new = y_stage, ks[-1]
        else:
            y_new = torch.addcmul(y, dt, outs[0])
            pos = 1
            f_new = rhs(t + dt, y_new) if tab.embedded else None
            if f_new is not None:
                ks.append(f_new)
        err = tuple(dt * outs[pos + i] for i in range(self._n_err)) if self._n_err else ()
        y_mid = torch.addcmul(y, dt, outs[-1]) if tab.b_mid is not None else None
        return StepResult(y_new, f_new, err, y_mid, tuple(ks))

    def interpolate(
        self, rhs: RHS, t: Tensor, dt: Tensor, y0: Tensor, f0: Tensor, res: StepResult, theta: Tensor
    ) -> Tensor:
        if res.y_mid is None:
            return super().interpolate(rhs, t, dt, y0, f0, res, theta)
        assert res.f is not None
        return self._quartic(theta, dt, y0, res.y, f0, res.f, res.y_mid)

    def error_ratio(self, err: tuple[Tensor, ...], scale: Tensor, mean: Callable[[Tensor], Tensor]) -> Tensor:
        if len(err) == 1:
            return super().error_ratio(err, scale, mean)
        # DOP853's combined estimate (Hairer, Nørsett & Wanner I, II.10; dop853.f):
        # ‖e5‖² / sqrt(‖e5‖² + 0.01 ‖e3‖²), in mean-square form.
        e5 = mean(torch.square(err[0] / scale))
        e3 = mean(torch.square(err[1] / scale))
        denom = torch.sqrt(e5 + self._hundredth * e3)
        return torch.where(denom > 0, e5 / torch.where(denom > 0, denom, torch.ones_like(denom)), e5)
