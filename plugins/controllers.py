"""Built-in step-size controllers: integral (I) and proportional–integral (PI)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from odeserve.hookspecs import hookimpl
from odeserve.solver import Const, StepSizeController

__all__ = ["IController", "PIController"]


class IController(StepSizeController):
    """Integral control: ``factor = safety · ratio^(-1/k)``, clipped to ``[factor_min, factor_max]``
    (no growth after a rejection).  ``k`` is the embedded estimate's order + 1.
    Reference: Hairer, Nørsett & Wanner, Solving ODEs I, §II.4, eq. (4.13)."""

    def __init__(
        self,
        *,
        error_exponent: int,
        dtype: torch.dtype,
        device: torch.device,
        safety: float = 0.9,
        factor_min: float = 0.2,
        factor_max: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(error_exponent=error_exponent, dtype=dtype, device=device)
        _check_factors(safety, factor_min, factor_max, options)
        c = lambda v: Const(v, dtype, device)  # noqa: E731
        self.safety, self.factor_min, self.factor_max = c(safety), c(factor_min), c(factor_max)
        self.one, self.alpha = c(1.0), c(-1.0 / error_exponent)

    def init_memory(self, like: Tensor) -> Tensor:
        return torch.ones_like(like)

    def _finish(self, factor: Tensor, accept: Tensor) -> Tensor:
        factor = torch.nan_to_num(factor, nan=0.0, posinf=float("inf"))
        factor = torch.clamp(factor, self.factor_min(), self.factor_max())
        return torch.where(accept, factor, torch.minimum(factor, self.one()))

    def adapt(self, dt: Tensor, ratio: Tensor, memory: Tensor, accept: Tensor) -> tuple[Tensor, Tensor]:
        return self._finish(self.safety() * torch.pow(ratio, self.alpha()), accept), memory


class PIController(IController):
    """Proportional–integral control: ``factor = safety · ratio^(-β1/k) · ratio_prev^(β2/k)``,
    where ``ratio_prev`` is the last accepted step's ratio (floored at 1e-4).  The defaults
    β1 = 0.85, β2 = 0.2 are the gains of Hairer's DOPRI5 code (exponents 0.17 and 0.04 at
    k = 5).  Söderlind's PI.4.2 (β1 = 0.7, β2 = 0.4) rejects fewer steps but takes more of
    them (measured in bench/results/core.md).  References: E. Hairer, G. Wanner, Solving
    ODEs II, §IV.2 and dopri5.f; G. Söderlind, Automatic control and adaptive time-stepping,
    Numer. Algorithms 31 (2002) 281–310."""

    def __init__(
        self, *, error_exponent: int, dtype: torch.dtype, device: torch.device,
        beta1: float = 0.85, beta2: float = 0.2, **options: Any,
    ) -> None:
        super().__init__(error_exponent=error_exponent, dtype=dtype, device=device, **options)
        self.alpha = Const(-beta1 / error_exponent, dtype, device)
        self.beta = Const(beta2 / error_exponent, dtype, device)
        self.floor = Const(1e-4, dtype, device)

    def adapt(self, dt: Tensor, ratio: Tensor, memory: Tensor, accept: Tensor) -> tuple[Tensor, Tensor]:
        factor = self.safety() * torch.pow(ratio, self.alpha()) * torch.pow(memory, self.beta())
        new_memory = torch.where(accept, torch.clamp(torch.nan_to_num(ratio, nan=1.0), min=self.floor()), memory)
        return self._finish(factor, accept), new_memory


def _check_factors(safety: float, factor_min: float, factor_max: float, extra: dict[str, Any]) -> None:
    from odeserve.errors import InvalidOptionError

    if extra:
        raise InvalidOptionError(
            f"unknown controller option(s) {sorted(extra)}; known: safety, factor_min, factor_max (and beta1, beta2 for 'pi')"
        )
    if not 0 < safety <= 1:
        raise InvalidOptionError(f"safety must be in (0, 1], got {safety}")
    if not 0 < factor_min < 1 < factor_max:
        raise InvalidOptionError(f"need 0 < factor_min < 1 < factor_max, got {factor_min}, {factor_max}")


@hookimpl
def odeserve_register_controllers(register: Any) -> None:
    register.add_controller("i", IController)
    register.add_controller("pi", PIController)
