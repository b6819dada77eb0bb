"""Heun's third-order method: order 3, 3 stages, not embedded (torchdiffeq's ``heun3``).

Reference: K. Heun (1900); Hairer, Nørsett & Wanner, Solving ODEs I, Table II.1.1.
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

HEUN3 = ButcherTableau(
    "heun3",
    c=[0, F(1, 3), F(2, 3)], a=[(), (F(1, 3),), (0, F(2, 3))], b=[F(1, 4), 0, F(3, 4)], order=3,
)


class Heun3(ExplicitRK):
    """Heun's third-order method: order 3, 3 stages, not embedded (torchdiffeq's ``heun3``)."""

    tableau = HEUN3
