"""Dormand–Prince 5(4): order 5 with an embedded order-4 estimate, 7 stages, FSAL;
    quartic dense output through Shampine's midpoint weights.

Reference: J. R. Dormand, P. J. Prince, A family of embedded Runge–Kutta formulae, J. Comp. Appl. Math. 6 (1980)
    19–26; midpoint weights: L. F. Shampine, Some practical Runge–Kutta formulas, Math. Comp. 46 (1986) 135–150.
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

DOPRI5 = ButcherTableau(
    "dopri5",
    c=[0, F(1, 5), F(3, 10), F(4, 5), F(8, 9), 1, 1],
    a=[
        (),
        (F(1, 5),),
        (F(3, 40), F(9, 40)),
        (F(44, 45), F(-56, 15), F(32, 9)),
        (F(19372, 6561), F(-25360, 2187), F(64448, 6561), F(-212, 729)),
        (F(9017, 3168), F(-355, 33), F(46732, 5247), F(49, 176), F(-5103, 18656)),
        (F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84)),
    ],
    b=[F(35, 384), 0, F(500, 1113), F(125, 192), F(-2187, 6784), F(11, 84), 0],
    order=5,
    # b - b̂ with b̂ = (5179/57600, 0, 7571/16695, 393/640, -92097/339200, 187/2100, 1/40)
    b_error=[
        F(35, 384) - F(5179, 57600),
        0,
        F(500, 1113) - F(7571, 16695),
        F(125, 192) - F(393, 640),
        F(-2187, 6784) - F(-92097, 339200),
        F(11, 84) - F(187, 2100),
        F(-1, 40),
    ],
    error_order=4,
    # Shampine (1986): y(t + dt/2) = y + dt * sum_j b_mid_j k_j
    b_mid=[
        F(6025192743, 30085553152) / 2,
        0,
        F(51252292925, 65400821598) / 2,
        F(-2691868925, 45128329728) / 2,
        F(187940372067, 1594534317056) / 2,
        F(-1776094331, 19743644256) / 2,
        F(11237099, 235043384) / 2,
    ],
)


class Dopri5(ExplicitRK):
    """Dormand–Prince 5(4): order 5 with an embedded order-4 estimate, 7 stages, FSAL;
    quartic dense output through Shampine's midpoint weights."""

    tableau = DOPRI5
