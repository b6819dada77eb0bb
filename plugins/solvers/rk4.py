"""The classic Runge–Kutta method: order 4, 4 stages, not embedded.

Reference: Kutta (1901); Hairer, Nørsett & Wanner, Solving ODEs I, Table II.1.2 (left).
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

RK4 = ButcherTableau(
    "rk4",
    c=[0, F(1, 2), F(1, 2), 1], a=[(), (F(1, 2),), (0, F(1, 2)), (0, 0, 1)], b=[F(1, 6), F(1, 3), F(1, 3), F(1, 6)], order=4,
)


class RungeKutta4(ExplicitRK):
    """The classic Runge–Kutta method: order 4, 4 stages, not embedded."""

    tableau = RK4
