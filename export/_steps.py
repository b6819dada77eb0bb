"""``steps="auto"``: the smallest fixed step count whose solution matches a tight adaptive
reference on calibration inputs to the requested tolerance.

Shared by every exporter that freezes a fixed-step grid into an artifact.  The search
doubles the step count until the tolerance is met (or the cap is passed), then bisects
between the last failing and the first passing count.  The error is measured in the
export's dtype (what the artifact will compute) against a float64 reference when ``f``
can run in float64 (a module is copied and cast; the caller's module is not touched).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from odeserve._api import prepare
from odeserve.errors import InvalidOptionError, OdeserveError

from ._artifact import StepsNotReachedError

__all__ = ["AutoSteps", "choose_steps"]


@dataclass(frozen=True)
class AutoSteps:
    """What the search found: the step count, its error (in units of the tolerance: ≤ 1
    passes), and how the reference was made."""

    steps: int
    error: float
    rtol: float
    atol: float
    reference: str
    tried: tuple[tuple[int, float], ...]

    def as_metadata(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol, "error": self.error, "reference": self.reference,
                "tried": [list(t) for t in self.tried]}


def _comps(y: Any) -> tuple[Tensor, ...]:
    return tuple(y) if isinstance(y, (tuple, list)) else (y,)


def _as(y: Any, dtype: torch.dtype) -> Any:
    c = tuple(x.detach().to(dtype) for x in _comps(y))
    return c if isinstance(y, (tuple, list)) else c[0]


def _solve(f: Callable[..., Any], y0: Any, times: Tensor, **options: Any) -> Tensor:
    """The eager per-sample solve's flat outputs ``(T, rows, D)``."""
    with torch.no_grad():
        p = prepare(f, y0, times, batch="per_sample", loop="python", **options)
        return p.run(p.spec.flatten(y0))[0]


def _reference(f: Callable[..., Any], y0: Any, times: Tensor, rtol: float, atol: float) -> tuple[Tensor, str]:
    """A tight dopri5 solve, in float64 where ``f`` allows it."""
    tight_r, tight_a = max(rtol * 1e-3, 1e-12), max(atol * 1e-3, 1e-14)
    f64: Callable[..., Any] = copy.deepcopy(f).double() if isinstance(f, nn.Module) else f
    try:
        ys = _solve(f64, _as(y0, torch.float64), times.double(), solver="dopri5", rtol=tight_r, atol=tight_a,
                    max_steps=200_000)
        return ys, f"dopri5 float64 rtol={tight_r:g} atol={tight_a:g}"
    except (OdeserveError, RuntimeError, TypeError):
        # f cannot run in float64 (e.g. a function with float32 constants): stay in its dtype.
        eps = torch.finfo(_comps(y0)[0].dtype).eps
        tight_r, tight_a = max(tight_r, 10 * eps), max(tight_a, 10 * eps)
        ys = _solve(f, y0, times, solver="dopri5", rtol=tight_r, atol=tight_a, max_steps=200_000)
        return ys.double(), f"dopri5 {_comps(y0)[0].dtype} rtol={tight_r:g} atol={tight_a:g}"


def choose_steps(
    f: Callable[..., Any],
    calibration: Any,
    times: Tensor,
    *,
    solver: str,
    rtol: float,
    atol: float,
    cap: int = 4096,
) -> AutoSteps:
    """The smallest step count ``n ≤ cap`` with ``max |y_n − y_ref| / (atol + rtol |y_ref|) ≤ 1``
    over every calibration sample, output time and component.

    Raises :class:`StepsNotReachedError` (with the best count and error seen) when no count up
    to ``cap`` meets the tolerance — e.g. a tolerance below the dtype's rounding, or a stiff f.
    """
    if not (rtol > 0 or atol > 0) or rtol < 0 or atol < 0 or not (math.isfinite(rtol) and math.isfinite(atol)):
        raise InvalidOptionError(f"steps='auto' needs finite rtol, atol ≥ 0 (not both 0); got rtol={rtol}, atol={atol}")
    if not isinstance(cap, int) or cap < 1:
        raise InvalidOptionError(f"the steps='auto' cap must be a positive integer, got {cap!r}")
    ref, how = _reference(f, calibration, times, rtol, atol)
    scale = atol + rtol * ref.abs()
    cache: dict[int, float] = {}

    def error(n: int) -> float:
        if n not in cache:
            ys = _solve(f, calibration, times, solver=solver, steps=n, max_steps=max(10_000, 2 * n + len(times)))
            e = ((ys.double() - ref).abs() / scale).max()
            cache[n] = float(e) if bool(torch.isfinite(e)) else math.inf
        return cache[n]

    prev, n = 0, 1
    while error(n) > 1.0:
        if n >= cap:
            best = min(cache, key=lambda k: (cache[k], k))
            raise StepsNotReachedError(
                f"steps='auto' found no step count up to {cap} for {solver!r} within rtol={rtol:g}, atol={atol:g} "
                f"(reference: {how}); best: steps={best} with error {cache[best]:.3g}× the tolerance. "
                "Loosen rtol/atol, raise steps_cap, use a higher-order solver, or export float64",
                best, cache[best],
            )
        prev, n = n, min(2 * n, cap)
    lo, hi = prev, n  # error(lo) > 1 (or lo = 0), error(hi) ≤ 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if error(mid) <= 1.0:
            hi = mid
        else:
            lo = mid
    tried = tuple(sorted(cache.items()))
    return AutoSteps(hi, cache[hi], rtol, atol, how, tried)


def calibration_inputs(example: Any, extra: Sequence[Any] | None) -> Any:
    """The example, or the example and the caller's calibration batches joined on axis 0."""
    if not extra:
        return example
    parts = [example, *extra]
    comps = [torch.cat([_comps(p)[i].to(_comps(example)[i].dtype) for p in parts]) for i in range(len(_comps(example)))]
    return tuple(comps) if isinstance(example, (tuple, list)) else comps[0]
