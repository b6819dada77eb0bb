"""Kutta's 3/8 rule: order 4, 4 stages, not embedded.

Reference: Kutta (1901); Hairer, Nørsett & Wanner, Solving ODEs I, Table II.1.2 (right).
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

RK38 = ButcherTableau(
    "rk38",
    c=[0, F(1, 3), F(2, 3), 1], a=[(), (F(1, 3),), (F(-1, 3), 1), (1, -1, 1)], b=[F(1, 8), F(3, 8), F(3, 8), F(1, 8)], order=4,
)


class RungeKutta38(ExplicitRK):
    """Kutta's 3/8 rule: order 4, 4 stages, not embedded."""

    tableau = RK38
