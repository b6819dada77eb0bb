"""SSPRK3 for odeserve: a Butcher tableau, a three-line class and one hook."""

from __future__ import annotations

from fractions import Fraction as F

from odeserve import ButcherTableau, hookimpl
from odeserve.plugins.solvers import ExplicitRK

# Shu & Osher (1988), "Efficient implementation of essentially non-oscillatory
# shock-capturing schemes", J. Comput. Phys. 77, 439–471: the optimal third-order
# strong-stability-preserving Runge–Kutta method, written as a Butcher tableau.
SSPRK3_TABLEAU = ButcherTableau(
    "ssprk3",
    c=[0, 1, F(1, 2)],
    a=[(), (1,), (F(1, 4), F(1, 4))],
    b=[F(1, 6), F(1, 6), F(2, 3)],
    order=3,
)


class SSPRK3(ExplicitRK):
    """SSPRK3 (Shu–Osher): order 3, 3 stages, not embedded, SSP coefficient 1."""

    tableau = SSPRK3_TABLEAU


@hookimpl
def odeserve_register_solvers(register):  # type: ignore[no-untyped-def]
    register.add_solver("ssprk3", SSPRK3)
