"""Explicit midpoint rule: order 2, 2 stages, not embedded.

Reference: Hairer, Nørsett & Wanner, Solving ODEs I, §II.1 (Runge 1895).
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

MIDPOINT = ButcherTableau(
    "midpoint",
    c=[0, F(1, 2)], a=[(), (F(1, 2),)], b=[0, 1], order=2,
)


class Midpoint(ExplicitRK):
    """Explicit midpoint rule: order 2, 2 stages, not embedded."""

    tableau = MIDPOINT
