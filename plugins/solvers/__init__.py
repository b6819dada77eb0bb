"""Built-in solvers: every Runge–Kutta method is a Butcher tableau run by :class:`ExplicitRK`;
reversible Heun, which carries more than ``y``, is its own small class.

Registered through the ``odeserve_register_solvers`` hook, reached through this package's
``odeserve`` entry point — the same path a third-party solver plugin takes.
"""

from __future__ import annotations

from typing import Any

from odeserve.hookspecs import hookimpl
from odeserve.solver import Solver
from odeserve.tableau import ButcherTableau

from .bosh3 import Bosh3
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .euler import Euler
from .heun import Heun
from .heun3 import Heun3
from .heun_euler import HeunEuler
from .midpoint import Midpoint
from .ralston import Ralston
from .reversible_heun import ReversibleHeun
from .rk import ExplicitRK
from .rk4 import RungeKutta4
from .rk38 import RungeKutta38
from .tsit5 import Tsit5

SOLVERS: dict[str, type[Solver]] = {
    cls.tableau.name: cls
    for cls in (
        Euler, Midpoint, Heun, Ralston, Heun3, RungeKutta4, RungeKutta38,
        HeunEuler, Bosh3, Dopri5, Tsit5, Dopri8,
    )
}
SOLVERS["reversible_heun"] = ReversibleHeun
TABLEAUS: dict[str, ButcherTableau] = {
    name: cls.tableau for name, cls in SOLVERS.items() if issubclass(cls, ExplicitRK)
}

__all__ = ["ExplicitRK", "SOLVERS", "TABLEAUS"] + [cls.__name__ for cls in SOLVERS.values()]


@hookimpl
def odeserve_register_solvers(register: Any) -> None:
    for name, cls in SOLVERS.items():
        register.add_solver(name, cls)
