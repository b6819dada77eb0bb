"""Heun–Euler 2(1): order 2 with an embedded Euler estimate, 2 stages, not FSAL
    (f(t + dt, y_new) is evaluated and carried to the next step).

Reference: Hairer, Nørsett & Wanner, Solving ODEs I, §II.4 (the simplest embedded pair).
"""

from fractions import Fraction as F

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

HEUN_EULER = ButcherTableau(
    "heun_euler",
    c=[0, 1], a=[(), (1,)], b=[F(1, 2), F(1, 2)], order=2,
    # b - b̂ with b̂ = (1, 0): explicit Euler
    b_error=[F(-1, 2), F(1, 2)], error_order=1,
)


class HeunEuler(ExplicitRK):
    """Heun–Euler 2(1): order 2 with an embedded Euler estimate, 2 stages, not FSAL
    (f(t + dt, y_new) is evaluated and carried to the next step)."""

    tableau = HEUN_EULER
