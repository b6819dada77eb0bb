"""Explicit Euler: order 1, 1 stage, not embedded (THEORY.md §1: a ResNet block).

Reference: Leonhard Euler, Institutionum calculi integralis (1768).
"""

from odeserve.tableau import ButcherTableau

from .rk import ExplicitRK

EULER = ButcherTableau(
    "euler",
    c=[0], a=[()], b=[1], order=1,
)


class Euler(ExplicitRK):
    """Explicit Euler: order 1, 1 stage, not embedded (THEORY.md §1: a ResNet block)."""

    tableau = EULER
