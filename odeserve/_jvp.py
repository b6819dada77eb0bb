"""``jvp()``: the pushforward of tangents along a solve (forward-mode sensitivities)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ._api import solve
from .errors import InvalidOptionError

__all__ = ["jvp"]


class _SolveOf(nn.Module):
    """``solve`` as a module holding ``f``, so ``functional_call`` can swap ``f``'s parameters
    for tangent-carrying ones around the whole solve."""

    def __init__(self, f: nn.Module, t: Any, options: dict[str, Any]) -> None:
        super().__init__()
        self.f = f
        self.t = t
        self.options = options

    def forward(self, y0: Any) -> Any:
        return solve(self.f, y0, self.t, sensitivity="forward", **self.options).ys


def jvp(
    f: Callable[..., Any],
    y0: Tensor | Sequence[Tensor],
    t: Any,
    tangent_y0: Tensor | Sequence[Tensor],
    tangent_params: Mapping[str, Tensor] | None = None,
    **solve_options: Any,
) -> tuple[Any, Any]:
    """Solve and push tangents forward: returns ``(ys, tangents)``, both shaped like
    ``solve(f, y0, t).ys`` (time on axis 0; tuples for tuple states), where ``tangents[i]``
    is ``∂z(t_i)/∂z(t0)·tangent_y0 + ∂z(t_i)/∂θ·tangent_params``.

    ``tangent_params`` maps names of ``f.named_parameters()`` (``f`` an ``nn.Module``) to
    tangents shaped like those parameters; parameters not named have tangent zero.  The
    other keyword arguments are :func:`odeserve.solve`'s.  This is ``torch.func.jvp`` over
    ``solve(..., sensitivity="forward")``: the tangent ODE ``dδ/dt = ∂f/∂z·δ + ∂f/∂θ·w`` is
    solved alongside ``z``.
    """
    if "sensitivity" in solve_options or "sensitivity_options" in solve_options:
        raise InvalidOptionError("jvp() always uses sensitivity='forward'; do not pass sensitivity options")
    if not tangent_params:
        return torch.func.jvp(
            lambda y: solve(f, y, t, sensitivity="forward", **solve_options).ys, (y0,), (tangent_y0,)
        )
    if not isinstance(f, nn.Module):
        raise InvalidOptionError("tangent_params needs f to be an nn.Module (tangents are matched by parameter name)")
    named = dict(f.named_parameters())
    unknown = sorted(set(tangent_params) - set(named))
    if unknown:
        raise InvalidOptionError(f"tangent_params names {unknown} are not parameters of f; it has {sorted(named)}")
    primals = {name: named[name] for name in tangent_params}
    holder = _SolveOf(f, t, solve_options)

    def run(y: Any, params: dict[str, Tensor]) -> Any:
        return torch.func.functional_call(holder, {f"f.{n}": p for n, p in params.items()}, (y,))

    return torch.func.jvp(run, (y0, primals), (tangent_y0, dict(tangent_params)))
