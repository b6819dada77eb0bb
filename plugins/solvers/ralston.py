"""Ralston's second-order method (minimum error bound): order 2, 2 stages, not embedded.

Reference: A. Ralston, Runge–Kutta methods with minimum error bounds, Math. Comp. 16 (1962) 431–437.
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

RALSTON = ButcherTableau(
    "ralston",
    c=[0, F(2, 3)], a=[(), (F(2, 3),)], b=[F(1, 4), F(3, 4)], order=2,
)


class Ralston(ExplicitRK):
    """Ralston's second-order method (minimum error bound): order 2, 2 stages, not embedded."""

    tableau = RALSTON
