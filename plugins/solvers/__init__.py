"""Built-in solvers: every one is a Butcher tableau run by :class:`ExplicitRK`.

Registered through the ``odeserve_register_solvers`` hook, reached through this package's
``odeserve`` entry point — the same path a third-party solver plugin takes.
"""

from __future__ import annotations

from typing import Any

from odeserve.hookspecs import hookimpl
from odeserve.tableau import ButcherTableau

from .bosh3 import Bosh3
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .euler import Euler
from .heun import Heun
from .heun_euler import HeunEuler
from .midpoint import Midpoint
from .ralston import Ralston
from .rk import ExplicitRK
from .rk4 import RungeKutta4
from .rk38 import RungeKutta38
from .tsit5 import Tsit5

SOLVERS: dict[str, type[ExplicitRK]] = {
    cls.tableau.name: cls
    for cls in (Euler, Midpoint, Heun, Ralston, RungeKutta4, RungeKutta38, HeunEuler, Bosh3, Dopri5, Tsit5, Dopri8)
}
TABLEAUS: dict[str, ButcherTableau] = {name: cls.tableau for name, cls in SOLVERS.items()}

__all__ = ["ExplicitRK", "SOLVERS", "TABLEAUS"] + [cls.__name__ for cls in SOLVERS.values()]


@hookimpl
def odeserve_register_solvers(register: Any) -> None:
    for name, cls in SOLVERS.items():
        register.add_solver(name, cls)
