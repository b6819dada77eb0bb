"""Tsit5: the Tsitouras 5(4) pair, 7 stages, FSAL.

Reference: Ch. Tsitouras, "Runge–Kutta pairs of order 5(4) satisfying only the first column
simplifying assumption", Comput. Math. Appl. 62 (2011) 770–775: the pair and its 4th-order
continuous extension.  Coefficients as printed there (and as used by OrdinaryDiffEq.jl,
diffrax and torchode), with two known corrections: the paper's "b̂" list already gives the
error weights b − b̂ (patrick-kidger/diffrax#98), and its 7th entry has the wrong sign
(SciML/OrdinaryDiffEq.jl#1654).  With b_error_7 = −1/66 the weights sum to 0 and
b̂ = b − b_error is of order 4 (checked in tests/test_tableaus.py).
"""

from __future__ import annotations

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

__all__ = ["TSIT5", "Tsit5"]

_C = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)

_A = (
    (),
    (0.161,),
    (-0.008480655492356989, 0.335480655492357),
    (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
    (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
    (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401,
     -0.02826905039406838),
    # FSAL: the last row is b, so stage 7 is f(t + h, y_new)
    (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
     2.324710524099774),
)

_B = (*_A[6], 0.0)

# Error weights b − b̂ (see the module docstring for the two corrections).
_B_ERROR = (
    0.00178001105222577714, 0.0008164344596567469, -0.007880878010261995,
    0.1447110071732629, -0.5823571654525552, 0.45808210592918697, -1.0 / 66.0,
)


def _dense_weights(t: float) -> tuple[float, ...]:
    """Weights b_j(θ) of the paper's 4th-order continuous extension,
    y(t0 + θh) ≈ y0 + h Σ_j b_j(θ) k_j, in the factored form of the paper."""
    return (
        -1.0530884977290216 * t * (t - 1.3299890189751412)
        * (t**2 - 1.4364028541716351 * t + 0.7139816917074209),
        0.1017 * t**2 * (t**2 - 2.1966568338249754 * t + 1.2949852507374631),
        2.490627285651252793 * t**2 * (t**2 - 2.38535645472061657 * t + 1.57803468208092486),
        -16.54810288924490272 * (t - 1.21712927295533244) * (t - 0.61620406037800089) * t**2,
        47.37952196281928122 * (t - 1.203071208372362603) * (t - 0.658047292653547382) * t**2,
        -34.87065786149660974 * (t - 1.2) * (t - 0.666666666666666667) * t**2,
        2.5 * (t - 1) * (t - 0.6) * t**2,
    )


TSIT5 = ButcherTableau(
    "tsit5",
    c=_C,
    a=_A,
    b=_B,
    order=5,
    b_error=_B_ERROR,
    error_order=4,
    b_mid=_dense_weights(0.5),  # b_j(1/2); b_j(1) reproduces b to ~1e-15
)


class Tsit5(ExplicitRK):
    """Tsitouras 5(4): order 5 with an embedded order-4 estimate, 7 stages, FSAL; quartic
    dense output through the midpoint of its continuous extension."""

    tableau = TSIT5
