"""Built-in sensitivity (gradient) methods, registered through ``odeserve_register_sensitivities``."""

from __future__ import annotations

from typing import Any

from odeserve.hookspecs import hookimpl

from .autograd import Autograd

__all__ = ["Autograd"]


@hookimpl
def odeserve_register_sensitivities(register: Any) -> None:
    register.add_sensitivity("autograd", Autograd)
