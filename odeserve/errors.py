"""Named errors.  Bad configuration is a ``ValueError`` subclass that says what to change;
a numerical failure is a per-sample ``Status`` that ``throw=True`` turns into
``SolveFailedError`` with the partial solution attached."""

from __future__ import annotations

from typing import Any

__all__ = [
    "OdeserveError",
    "InvalidTimesError",
    "ShapeMismatchError",
    "DtypeMismatchError",
    "NonFiniteError",
    "InvalidToleranceError",
    "InvalidOptionError",
    "InvalidTableauError",
    "UnknownPluginError",
    "DuplicatePluginError",
    "PluginLoadError",
    "SolveFailedError",
]


class OdeserveError(Exception):
    """Base class of every error odeserve raises on purpose."""


class InvalidTimesError(OdeserveError, ValueError):
    """The time grid is not strictly monotone, has repeats, or has too few points."""


class ShapeMismatchError(OdeserveError, ValueError):
    """``f(t, y0)`` does not have the shape of ``y0``, or batch sizes disagree."""


class DtypeMismatchError(OdeserveError, TypeError):
    """States, derivatives or times have incompatible dtypes."""


class NonFiniteError(OdeserveError, ValueError):
    """NaN or Inf in an input (``y0``, ``t``) or in ``f(t0, y0)``."""


class InvalidToleranceError(OdeserveError, ValueError):
    """Negative, non-finite or all-zero tolerances."""


class InvalidOptionError(OdeserveError, ValueError):
    """An option has a value the solver cannot use (e.g. ``steps`` and ``dt`` together)."""


class InvalidTableauError(OdeserveError, ValueError):
    """A Butcher tableau fails its consistency checks."""


class UnknownPluginError(OdeserveError, KeyError):
    """A solver, controller or sensitivity name that no plugin registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicatePluginError(OdeserveError, ValueError):
    """Two plugins registered the same name."""


class PluginLoadError(OdeserveError, ImportError):
    """A plugin could not be imported or its registration hook failed."""


class SolveFailedError(OdeserveError, RuntimeError):
    """At least one sample did not reach the final time.

    ``solution`` holds the partial result: ``ys`` up to where each sample stopped,
    ``status`` per sample and ``stats``.
    """

    def __init__(self, message: str, solution: Any) -> None:
        super().__init__(message)
        self.solution = solution
