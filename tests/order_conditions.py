"""Runge–Kutta order conditions from rooted trees (Butcher theory); a helper for the tests.

A method with weights ``w`` is of order p when, for every rooted tree t with ρ(t) ≤ p
nodes, the elementary weight Σ_j w_j Φ_j(t) equals 1/γ(t), where

    Φ_j(•) = 1,  Φ_j([t_1 … t_m]) = Π_k (A Φ(t_k))_j,  γ(•) = 1,  γ(t) = ρ(t) Π_k γ(t_k)

(Hairer, Nørsett & Wanner, Solving ODEs I, §II.2; Butcher, Numerical Methods for ODEs,
§3).  A continuous extension y(t + θh) ≈ y + h Σ_j w_j(θ) k_j is of order p when
Σ_j w_j(θ) Φ_j(t) = θ^ρ(t)/γ(t) for ρ(t) ≤ p.  Trees are built recursively: a tree of
order n is a root plus a multiset of subtrees whose orders sum to n − 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = ["Tree", "rooted_trees", "order_condition_residuals", "weights_order"]


@dataclass(frozen=True)
class Tree:
    children: tuple["Tree", ...]  # canonical: sorted by (order, index within that order)
    order: int
    gamma: int  # the density γ(t)
    name: str  # bracket notation, e.g. "[•[•]]"


@lru_cache(maxsize=None)
def _trees_of_order(n: int) -> tuple[Tree, ...]:
    if n == 1:
        return (Tree((), 1, 1, "•"),)
    # every tree of order < n, in a fixed canonical sequence
    pool = [t for k in range(1, n) for t in _trees_of_order(k)]
    out: list[Tree] = []

    def extend(children: list[Tree], start: int, left: int) -> None:
        # choose children with non-increasing pool index, so each multiset appears once
        if left == 0:
            gamma = n
            for ch in children:
                gamma *= ch.gamma
            name = "[" + "".join(ch.name for ch in children) + "]"
            out.append(Tree(tuple(children), n, gamma, name))
            return
        for i in range(start, -1, -1):
            if pool[i].order <= left:
                extend(children + [pool[i]], i, left - pool[i].order)

    extend([], len(pool) - 1, n - 1)
    return tuple(out)


def rooted_trees(max_order: int) -> list[Tree]:
    """All rooted trees with 1 … max_order nodes (1, 1, 2, 4, 9, 20, 48, 115, … per order)."""
    return [t for n in range(1, max_order + 1) for t in _trees_of_order(n)]


def _phi(tree: Tree, A: np.ndarray, c: np.ndarray, cache: dict) -> np.ndarray:
    """Stage vector Φ_j(tree); a single-node child contributes A·1 = c."""
    if tree not in cache:
        phi = np.ones(len(c))
        for ch in tree.children:
            phi = phi * (c if ch.order == 1 else A @ _phi(ch, A, c, cache))
        cache[tree] = phi
    return cache[tree]


def order_condition_residuals(
    tableau,
    max_order: int,
    weights: Sequence[float] | None = None,
    *,
    theta: float = 1.0,
    relative: bool = False,
) -> list[tuple[str, float]]:
    """``(tree name, Σ w_j Φ_j(tree) − θ^ρ/γ)`` for every tree with ρ ≤ max_order.

    ``weights`` defaults to ``tableau.b``; pass ``b − b_error`` for the embedded method or
    ``b_mid`` with ``theta=0.5`` for the dense output at the half step.  With
    ``relative=True`` each residual is divided by its target θ^ρ/γ.
    """
    s = tableau.stages
    A = np.zeros((s, s))
    for i, row in enumerate(tableau.a):
        A[i, :i] = row
    c = np.asarray(tableau.c, dtype=np.float64)
    w = np.asarray(tableau.b if weights is None else weights, dtype=np.float64)
    cache: dict = {}
    out = []
    for t in rooted_trees(max_order):
        target = theta**t.order / t.gamma
        r = float(w @ _phi(t, A, c, cache)) - target
        out.append((t.name, r / target if relative else r))
    return out


def weights_order(tableau, weights: Sequence[float] | None = None, *, max_order: int = 10,
                  tol: float = 1e-10) -> int:
    """The largest p ≤ max_order such that ``weights`` satisfy every condition of order ≤ p
    (relative tolerance ``tol``)."""
    res = order_condition_residuals(tableau, max_order, weights, relative=True)
    bad = [t.order for t, (_, r) in zip(rooted_trees(max_order), res) if abs(r) > tol]
    return min(bad) - 1 if bad else max_order
