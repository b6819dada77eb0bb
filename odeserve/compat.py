"""torchdiffeq-compatible entry points: switch by changing the import.

    from torchdiffeq import odeint, odeint_adjoint        # before
    from odeserve.compat import odeint, odeint_adjoint    # after

Same arguments, same method names (where odeserve has the method), same return layout:
a tensor ``(len(t), *y0.shape)``, or a tuple of such tensors for a tuple state.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor

from ._api import solve
from .errors import InvalidOptionError

__all__ = ["odeint", "odeint_adjoint", "METHODS"]

#: torchdiffeq method name → odeserve solver name.
METHODS = {
    "dopri8": "dopri8",
    "dopri5": "dopri5",
    "bosh3": "bosh3",
    "tsit5": "tsit5",
    "adaptive_heun": "heun_euler",
    "euler": "euler",
    "midpoint": "midpoint",
    "heun2": "heun",
    "heun3": "heun3",
    # torchdiffeq's "rk4" steps with Kutta's 3/8 rule (its rk4_alt_step_func), so the
    # compatible answer is odeserve's rk38; odeserve's own "rk4" is the classic method.
    "rk4": "rk38",
}
_NOT_HERE = {
    "explicit_adams": "odeserve has no multistep methods",
    "implicit_adams": "odeserve has no multistep methods",
    "fixed_adams": "odeserve has no multistep methods",
    "scipy_solver": "odeserve does not wrap scipy",
    # RKF2(1) propagates the order-2 solution with an error estimate that undershoots the
    # true error 2-30x (it measures the tiny-error order-1 companion): global errors of
    # 30-570x the tolerance were measured, so odeserve does not ship it.
    "fehlberg2": "its error estimate undershoots the true error (global errors 30-570x rtol measured); use 'bosh3'",
}

# torchdiffeq option → odeserve keyword
_OPTIONS = {"step_size": "dt", "first_step": "dt0", "max_num_steps": "max_steps", "dtype": None}


def _translate(method: str | None, options: dict[str, Any] | None) -> dict[str, Any]:
    method = method or "dopri5"
    if method not in METHODS:
        if method in _NOT_HERE:
            raise InvalidOptionError(
                f"torchdiffeq method {method!r} has no odeserve counterpart ({_NOT_HERE[method]}); "
                f"use one of {sorted(METHODS)}"
            )
        raise InvalidOptionError(f"unknown method {method!r}; odeserve.compat knows {sorted(METHODS)}")
    kw: dict[str, Any] = {"solver": METHODS[method]}
    for key, value in (options or {}).items():
        if key not in _OPTIONS:
            raise InvalidOptionError(
                f"option {key!r} is not supported by odeserve.compat; supported: {sorted(_OPTIONS)}"
            )
        target = _OPTIONS[key]
        if target is None or value is None:
            continue
        kw[target] = int(value) if target == "max_steps" else float(value)
    return kw


def odeint(
    func: Callable[..., Any],
    y0: Tensor | Sequence[Tensor],
    t: Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """``torchdiffeq.odeint``: gradients by backpropagating through the solver."""
    kw = _translate(method, options)
    kw.pop("dtype", None)
    sol = solve(func, y0, t, rtol=rtol, atol=atol, **kw)
    return sol.ys


def odeint_adjoint(
    func: Callable[..., Any],
    y0: Tensor | Sequence[Tensor],
    t: Tensor,
    *,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[Tensor] | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """``torchdiffeq.odeint_adjoint``: gradients by the back-solve adjoint (O(1) memory).
    ``adjoint_options={"norm": "seminorm"}`` turns on the seminorm."""
    kw = _translate(method, options)
    sens: dict[str, Any] = {
        "adjoint_rtol": rtol if adjoint_rtol is None else adjoint_rtol,
        "adjoint_atol": atol if adjoint_atol is None else adjoint_atol,
    }
    if adjoint_method is not None:
        sens["adjoint_solver"] = _translate(adjoint_method, None)["solver"]
    for key, value in (adjoint_options or {}).items():
        if key == "norm" and value == "seminorm":
            sens["seminorm"] = True
        else:
            raise InvalidOptionError(f"adjoint option {key!r}={value!r} is not supported; use norm='seminorm'")
    if adjoint_params is not None:
        sens["adjoint_params"] = tuple(adjoint_params)
    sol = solve(func, y0, t, rtol=rtol, atol=atol, sensitivity="adjoint", sensitivity_options=sens, **kw)
    return sol.ys
