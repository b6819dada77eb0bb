"""Bogacki–Shampine 3(2): order 3 with an embedded order-2 estimate, 4 stages, FSAL.

Reference: P. Bogacki, L. F. Shampine, A 3(2) pair of Runge–Kutta formulas, Appl. Math. Lett. 2 (1989) 321–325.
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

BOSH3 = ButcherTableau(
    "bosh3",
    c=[0, F(1, 2), F(3, 4), 1],
    a=[(), (F(1, 2),), (0, F(3, 4)), (F(2, 9), F(1, 3), F(4, 9))],
    b=[F(2, 9), F(1, 3), F(4, 9), 0],
    order=3,
    # b - b̂ with b̂ = (7/24, 1/4, 1/3, 1/8)
    b_error=[F(2, 9) - F(7, 24), F(1, 3) - F(1, 4), F(4, 9) - F(1, 3), -F(1, 8)],
    error_order=2,
)


class Bosh3(ExplicitRK):
    """Bogacki–Shampine 3(2): order 3 with an embedded order-2 estimate, 4 stages, FSAL."""

    tableau = BOSH3
