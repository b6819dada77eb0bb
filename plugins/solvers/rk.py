"""The one explicit Runge–Kutta stepper: every tableau-defined solver is this class plus data."""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import Tensor

from odeserve._interp import HermiteInterpolant
from odeserve.solver import RHS, Const, Solver, StepResult
from odeserve.tableau import ButcherTableau

__all__ = ["ExplicitRK"]


class ExplicitRK(Solver):
    """Explicit Runge–Kutta method driven by ``tableau``.

    Stage ``i`` is ``f(t + c_i dt, y + dt Σ_j a_ij k_j)``; the weighted sums are chains of
    fused multiply-adds over the non-zero coefficients, each a 0-d value of the state's dtype
    (:class:`~odeserve.solver.Const`), so a float64 graph never holds a coefficient rounded
    to float32.
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
        self._consts: dict[float, Const] = {}

        def nonzero(weights: tuple[float, ...] | None) -> list[tuple[int, float]]:
            if weights is None:
                return []
            terms = [(j, v) for j, v in enumerate(weights) if v != 0.0]
            for _, v in terms:
                self._add(v)
            return terms

        self._a_terms = [nonzero(row) for row in tab.a]
        self._b_terms = nonzero(tab.b)
        self._err_terms = [nonzero(tab.b_error)] if tab.b_error is not None else []
        if tab.b_error_aux is not None:
            self._err_terms.append(nonzero(tab.b_error_aux))
        self._mid_terms = nonzero(tab.b_mid)
        for c in tab.c:
            self._add(c)
        self._tensors = {v: c.tensor for v, c in self._consts.items()}
        self._hundredth = Const(0.01, self.dtype, self.device)
        if tab.b_mid is not None:
            self._quartic = HermiteInterpolant(True, dtype, device)

    def _add(self, value: float) -> None:
        if value not in self._consts:
            self._consts[value] = Const(value, self.dtype, self.device)

    def _coefficients(self) -> Callable[[float], Tensor]:
        """``value ↦`` the coefficient as a 0-d tensor of the solve's dtype: the tensors made
        once, or literal ops while torch.compile/export trace (see :class:`Const`).  Decided
        once per step: eager steps pay one dict lookup per coefficient."""
        if Const.literals():
            return lambda v: self._consts[v]()
        return self._tensors.__getitem__

    def _sum(self, terms: list[tuple[int, float]], ks: list[Tensor] | tuple[Tensor, ...],
             k: Callable[[float], Tensor]) -> Tensor:
        """Σ_j w_j k_j over the non-zero weights.  A chain of fused multiply-adds: at small
        batch this is a third of the cost of stacking the stages for one matmul."""
        (j0, v0), rest = terms[0], terms[1:]
        acc = ks[j0] * k(v0)
        for j, v in rest:
            acc = torch.addcmul(acc, ks[j], k(v))
        return acc

    def _combine(self, weights: Tensor, ks: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        """Rows of ``weights`` (``(m, n)``) applied to the first ``n`` stages: ``(m, *state)``."""
        n = weights.shape[-1]
        stacked = torch.stack(list(ks[:n])).reshape(n, -1)
        return (weights @ stacked).reshape((weights.shape[0],) + tuple(ks[0].shape))

    def step(self, rhs: RHS, t: Tensor, y: Tensor, dt: Tensor, f0: Tensor | None) -> StepResult:
        tab = self.tableau
        k = self._coefficients()
        # dt·v and t + c·dt are shared between stages within the step (RK4: both half steps).
        scaled: dict[float, Tensor] = {1.0: dt}
        nodes: dict[float, Tensor] = {0.0: t}

        def h(v: float) -> Tensor:
            if v not in scaled:
                scaled[v] = dt * k(v)
            return scaled[v]

        def node(c: float) -> Tensor:
            if c not in nodes:
                nodes[c] = t + scaled[c] if c in scaled else torch.addcmul(t, k(c), dt)
            return nodes[c]

        ks = [rhs(t, y) if f0 is None else f0]
        y_stage = y
        for i in range(1, tab.stages):
            terms = self._a_terms[i]
            if not terms:
                y_stage = y
            elif len(terms) == 1:
                y_stage = torch.addcmul(y, ks[terms[0][0]], h(terms[0][1]))
            else:
                y_stage = torch.addcmul(y, self._sum(terms, ks, k), dt)
            ks.append(rhs(node(tab.c[i]), y_stage))
        if tab.fsal:
            y_new, f_new = y_stage, ks[-1]
        else:
            if len(self._b_terms) == 1:
                y_new = torch.addcmul(y, ks[self._b_terms[0][0]], h(self._b_terms[0][1]))
            else:
                y_new = torch.addcmul(y, self._sum(self._b_terms, ks, k), dt)
            f_new = rhs(node(1.0), y_new) if tab.embedded else None
            if f_new is not None:
                ks.append(f_new)
        err = tuple(self._sum(terms, ks, k) * dt for terms in self._err_terms)
        return StepResult(y_new, f_new, err, None, tuple(ks))

    def interpolate(
        self, rhs: RHS, t: Tensor, dt: Tensor, y0: Tensor, f0: Tensor, res: StepResult, theta: Tensor
    ) -> Tensor:
        if not self._mid_terms:
            return super().interpolate(rhs, t, dt, y0, f0, res, theta)
        assert res.f is not None
        y_mid = torch.addcmul(y0, self._sum(self._mid_terms, res.ks, self._coefficients()), dt)
        return self._quartic(theta, dt, y0, res.y, f0, res.f, y_mid)

    def error_ratio(self, err: tuple[Tensor, ...], scale: Tensor, mean: Callable[[Tensor], Tensor]) -> Tensor:
        if len(err) == 1:
            return super().error_ratio(err, scale, mean)
        # DOP853's combined estimate (Hairer, Nørsett & Wanner I, II.10; dop853.f):
        # ‖e5‖² / sqrt(‖e5‖² + 0.01 ‖e3‖²), in mean-square form.
        e5 = mean(torch.square(err[0] / scale))
        e3 = mean(torch.square(err[1] / scale))
        denom = torch.sqrt(e5 + self._hundredth() * e3)
        return torch.where(denom > 0, e5 / torch.where(denom > 0, denom, torch.ones_like(denom)), e5)
