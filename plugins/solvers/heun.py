"""Heun's method (explicit trapezoidal rule): order 2, 2 stages, not embedded.

Reference: Hairer, Nørsett & Wanner, Solving ODEs I, §II.1 (Heun 1900).
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

HEUN = ButcherTableau(
    "heun",
    c=[0, 1], a=[(), (1,)], b=[F(1, 2), F(1, 2)], order=2,
)


class Heun(ExplicitRK):
    """Heun's method (explicit trapezoidal rule): order 2, 2 stages, not embedded."""

    tableau = HEUN
