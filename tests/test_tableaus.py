"""Every registered Butcher tableau satisfies the order conditions it claims (Butcher
rooted-tree theory, see tests/order_conditions.py), and the validator rejects broken ones."""

from __future__ import annotations

import pytest

from odeserve.errors import InvalidTableauError
from odeserve.plugins.solvers import TABLEAUS
from odeserve.tableau import ButcherTableau

try:  # tests/ as a package or (pytest's default rootdir-relative) plain directory
    from .order_conditions import order_condition_residuals, rooted_trees, weights_order
except ImportError:
    from order_conditions import order_condition_residuals, rooted_trees, weights_order

RTOL = 1e-10  # residual relative to the target θ^ρ/γ
FAIL = 1e-6  # a residual this large is a genuinely violated condition, not rounding

NAMES = sorted(TABLEAUS)
EMBEDDED = [n for n in NAMES if TABLEAUS[n].b_error is not None]
AUX = [n for n in NAMES if TABLEAUS[n].b_error_aux is not None]
MID = [n for n in NAMES if TABLEAUS[n].b_mid is not None]


def _b_hat(t: ButcherTableau, error: tuple[float, ...]) -> list[float]:
    return [b - e for b, e in zip(t.b, error)]


def _by_order(t: ButcherTableau, max_order: int, weights=None, theta: float = 1.0):
    """{order: [(tree name, relative residual), …]} for ρ ≤ max_order."""
    res = order_condition_residuals(t, max_order, weights, theta=theta, relative=True)
    out: dict[int, list] = {}
    for tree, r in zip(rooted_trees(max_order), res):
        out.setdefault(tree.order, []).append(r)
    return out


def _bad(pairs, tol=RTOL):
    return [(name, r) for name, r in pairs if abs(r) > tol]


@pytest.mark.parametrize("name", NAMES)
def test_order_conditions(name):
    t = TABLEAUS[name]
    res = order_condition_residuals(t, t.order, relative=True)
    assert not _bad(res), f"{name}: b violates order conditions up to order {t.order}"


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_order(name):
    t = TABLEAUS[name]
    q = t.error_order
    assert q is not None and 1 <= q < t.order
    res = _by_order(t, max(t.order, q + 1), _b_hat(t, t.b_error))
    for k in range(1, q + 1):
        assert not _bad(res[k]), f"{name}: b̂ = b − b_error violates an order-{k} condition"
    # the embedded method is really of lower order: its declared order is exact, and it
    # is in particular not of the propagated order
    assert _bad(res[q + 1], FAIL), f"{name}: b̂ satisfies all order-{q + 1} conditions"
    assert _bad(res[t.order], FAIL), f"{name}: b̂ satisfies all order-{t.order} conditions"


@pytest.mark.parametrize("name", AUX)
def test_aux_error_estimate(name):
    # DOP853's second estimate is of order 3: lower than the main one, but consistent
    t = TABLEAUS[name]
    p_aux = weights_order(t, _b_hat(t, t.b_error_aux), max_order=t.order, tol=RTOL)
    assert 1 <= p_aux < t.error_order


@pytest.mark.parametrize("name", MID)
def test_b_mid_dense_output(name):
    # continuous extension of order ≥ 3 at θ = 1/2: Σ b_mid_j Φ_j(t) = θ^ρ(t)/γ(t), ρ ≤ 3
    t = TABLEAUS[name]
    res = order_condition_residuals(t, 3, t.b_mid, theta=0.5, relative=True)
    assert not _bad(res), f"{name}: b_mid is not a 3rd-order value at the half step"


def _kwargs(t: ButcherTableau) -> dict:
    return dict(
        c=list(t.c), a=[list(row) for row in t.a], b=list(t.b), order=t.order,
        b_error=None if t.b_error is None else list(t.b_error), error_order=t.error_order,
        b_error_aux=None if t.b_error_aux is None else list(t.b_error_aux),
        b_mid=None if t.b_mid is None else list(t.b_mid),
    )


def _row_sum_off(kw):
    kw["c"][-1] += 1e-6


def _weights_off(kw):
    kw["b"][0] += 1e-6


def _error_sum_off(kw):
    kw["b_error"] = [e + 1e-6 for e in kw["b_error"] or [0.0] * len(kw["b"])]
    kw["error_order"] = kw["error_order"] or 1


def _not_lower_triangular(kw):
    # an entry on the diagonal (an implicit stage); the row sum is left unchanged
    row = kw["a"][-1]
    if row:
        row[0] -= 0.1
    row.append(0.1)
    kw["c"][-1] = sum(row)


BREAKS = [_row_sum_off, _weights_off, _error_sum_off, _not_lower_triangular]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("breaker", BREAKS, ids=lambda f: f.__name__.strip("_"))
def test_validator_rejects(name, breaker):
    t = TABLEAUS[name]
    ButcherTableau(t.name, **_kwargs(t))  # the unbroken copy is accepted
    kw = _kwargs(t)
    breaker(kw)
    with pytest.raises(InvalidTableauError):
        ButcherTableau(t.name, **kw)
