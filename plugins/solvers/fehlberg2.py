"""Runge–Kutta–Fehlberg 2(1): order 2 with an embedded order-1 estimate, 3 stages, not FSAL
    (torchdiffeq's ``fehlberg2``).

Reference: E. Fehlberg, Low-order classical Runge–Kutta formulas with stepsize control, NASA TR R-315 (1969).
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

FEHLBERG2 = ButcherTableau(
    "fehlberg2",
    c=[0, F(1, 2), 1],
    a=[(), (F(1, 2),), (F(1, 256), F(255, 256))],
    b=[F(1, 512), F(255, 256), F(1, 512)],
    order=2,
    # b - b̂ with b̂ = (1/256, 255/256, 0), the first-order RKF1 weights
    b_error=[F(-1, 512), 0, F(1, 512)],
    error_order=1,
)


class Fehlberg2(ExplicitRK):
    """Runge–Kutta–Fehlberg 2(1): order 2 with an embedded order-1 estimate, 3 stages, not FSAL
    (torchdiffeq's ``fehlberg2``)."""

    tableau = FEHLBERG2
