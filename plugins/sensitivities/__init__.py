"""Built-in sensitivity (gradient) methods, registered through ``odeserve_register_sensitivities``."""

from __future__ import annotations

from typing import Any

from odeserve.hookspecs import hookimpl

from .adjoint import AdjointVJP
from .autograd import Autograd
from .checkpoint import Checkpointed
from .forward import ForwardSensitivity
from .reversible import ReversibleAdjoint

SENSITIVITIES = {
    cls.name: cls for cls in (Autograd, AdjointVJP, Checkpointed, ForwardSensitivity, ReversibleAdjoint)
}

__all__ = ["SENSITIVITIES"] + [cls.__name__ for cls in SENSITIVITIES.values()]


@hookimpl
def odeserve_register_sensitivities(register: Any) -> None:
    for name, cls in SENSITIVITIES.items():
        register.add_sensitivity(name, cls)
