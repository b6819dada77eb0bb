"""odeserve: neural ODE solvers for PyTorch that compile and export.

Public API: :func:`solve`, :class:`Solution`, :class:`Status`, the plugin bases
(:class:`Solver`, :class:`StepSizeController`, :class:`Sensitivity`, :class:`ButcherTableau`),
the plugin registry (:func:`register`, :func:`get_registry`, :data:`hookimpl`) and the errors.
"""

from __future__ import annotations

from ._api import solve
from ._jvp import jvp
from .errors import (
    DtypeMismatchError,
    DuplicatePluginError,
    InvalidOptionError,
    InvalidTableauError,
    InvalidTimesError,
    InvalidToleranceError,
    NonFiniteError,
    OdeserveError,
    PluginLoadError,
    ShapeMismatchError,
    SolveFailedError,
    UnknownPluginError,
)
from .hookspecs import hookimpl
from .registry import Registry, get_registry, register, set_registry
from .solution import Solution, Status
from .solver import Sensitivity, Solver, StepResult, StepSizeController
from .tableau import ButcherTableau

__version__ = "0.1.0"

__all__ = [
    "solve",
    "jvp",
    "Solution",
    "Status",
    "Solver",
    "StepResult",
    "StepSizeController",
    "Sensitivity",
    "ButcherTableau",
    "hookimpl",
    "register",
    "get_registry",
    "set_registry",
    "Registry",
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
    "__version__",
]
