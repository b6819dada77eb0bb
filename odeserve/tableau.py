"""Butcher tableaus: an explicit Runge–Kutta method as validated data."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence, Union

from .errors import InvalidTableauError

Number = Union[float, Fraction, int]

__all__ = ["ButcherTableau"]


def _floats(values: Sequence[Number]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ButcherTableau:
    """Coefficients of an explicit Runge–Kutta method, checked on construction.

    ``a[i]`` holds the ``i`` coefficients of stage ``i`` (row 0 is empty), ``c[i]`` its
    time node, ``b`` the weights of the propagated solution.  An embedded pair adds
    ``b_error = b − b̂`` (the weights whose combination estimates the local error);
    DOP853 adds a second, lower-order estimate in ``b_error_aux``.  ``b_mid`` are weights
    giving the solution at ``t + dt/2``, which makes a quartic dense output possible.

    The tableau is *FSAL* (first same as last) when the last stage is evaluated at
    ``c = 1`` on the propagated solution itself (its row equals ``b``): the stepper then
    reuses that evaluation as the next step's first stage.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    b_error_aux: tuple[float, ...] | None = None
    b_mid: tuple[float, ...] | None = None
    tol: float = 1e-12

    def __init__(
        self,
        name: str,
        *,
        c: Sequence[Number],
        a: Sequence[Sequence[Number]],
        b: Sequence[Number],
        order: int,
        b_error: Sequence[Number] | None = None,
        error_order: int | None = None,
        b_error_aux: Sequence[Number] | None = None,
        b_mid: Sequence[Number] | None = None,
        tol: float = 1e-12,
    ) -> None:
        put = object.__setattr__
        put(self, "name", name)
        put(self, "c", _floats(c))
        put(self, "a", tuple(_floats(row) for row in a))
        put(self, "b", _floats(b))
        put(self, "order", int(order))
        put(self, "b_error", None if b_error is None else _floats(b_error))
        put(self, "error_order", error_order)
        put(self, "b_error_aux", None if b_error_aux is None else _floats(b_error_aux))
        put(self, "b_mid", None if b_mid is None else _floats(b_mid))
        put(self, "tol", tol)
        self._validate()

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def embedded(self) -> bool:
        return self.b_error is not None

    @property
    def fsal(self) -> bool:
        last = self.a[-1] if self.stages > 1 else ()
        return (
            self.stages > 1
            and abs(self.c[-1] - 1.0) <= self.tol
            and len(last) == self.stages - 1
            and all(abs(x - y) <= self.tol for x, y in zip(last, self.b[:-1]))
            and abs(self.b[-1]) <= self.tol
        )

    def _fail(self, what: str) -> None:
        raise InvalidTableauError(f"Butcher tableau {self.name!r}: {what}")

    def _validate(self) -> None:
        s = self.stages
        if s == 0:
            self._fail("needs at least one stage")
        if len(self.a) != s:
            self._fail(f"has {len(self.a)} rows in a but {s} nodes in c")
        for i, row in enumerate(self.a):
            if len(row) != i:
                self._fail(f"row {i} of a must hold {i} coefficients (explicit method), got {len(row)}")
            if abs(sum(row) - self.c[i]) > self.tol:
                self._fail(f"row {i} of a sums to {sum(row)!r}, but c[{i}] = {self.c[i]!r}")
        if len(self.b) != s:
            self._fail(f"b has {len(self.b)} weights for {s} stages")
        if abs(sum(self.b) - 1.0) > self.tol:
            self._fail(f"weights b sum to {sum(self.b)!r}, not 1")
        if self.order < 1:
            self._fail("order must be at least 1")
        for label, weights in (("b_error", self.b_error), ("b_error_aux", self.b_error_aux)):
            if weights is None:
                continue
            if len(weights) != s:
                self._fail(f"{label} has {len(weights)} weights for {s} stages")
            if abs(sum(weights)) > self.tol:
                self._fail(f"error weights {label} sum to {sum(weights)!r}, not 0")
        if self.b_error is not None and self.error_order is None:
            self._fail("an embedded pair must state error_order (the order of b̂)")
        if self.b_mid is not None:
            if len(self.b_mid) != s:
                self._fail(f"b_mid has {len(self.b_mid)} weights for {s} stages")
            if abs(sum(self.b_mid) - 0.5) > self.tol:
                self._fail(f"b_mid sums to {sum(self.b_mid)!r}; weights for y(t + dt/2) sum to 1/2")
