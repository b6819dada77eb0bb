"""The plugin hooks.  Each docstring here is the plugin author's documentation.

A plugin is any module or object with functions marked ``@odeserve.hookimpl`` named after
these hooks.  Ship it with an entry point in your package's ``pyproject.toml``::

    [project.entry-points.odeserve]
    my_solvers = "my_package.plugin"

odeserve's own solvers, controllers and sensitivities register through these same hooks
and the same entry-point group.  Or add a plugin at run time with ``odeserve.register(obj)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .registry import Registrar

PROJECT = "odeserve"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def odeserve_register_solvers(register: "Registrar") -> None:
    """Add solvers with ``register.add_solver(name, cls)``.

    ``cls`` subclasses :class:`odeserve.Solver`.  The quickest way is a Butcher tableau::

        from odeserve import ButcherTableau, hookimpl
        from odeserve.plugins.solvers import ExplicitRK

        class SSPRK3(ExplicitRK):
            \"\"\"Order 3, 3 stages, not embedded.\"\"\"
            tableau = ButcherTableau("ssprk3", c=[0, 1, 0.5], a=[(), (1,), (0.25, 0.25)],
                                     b=[1/6, 1/6, 2/3], order=3)

        @hookimpl
        def odeserve_register_solvers(register):
            register.add_solver("ssprk3", SSPRK3)

    The class must set ``order``, ``adaptive``, ``evals_per_step`` (``ExplicitRK`` derives
    them from the tableau) and implement ``step``.  A name already taken by another plugin
    is an error naming both.
    """


@hookspec
def odeserve_register_controllers(register: "Registrar") -> None:
    """Add step-size controllers with ``register.add_controller(name, cls)``.

    ``cls`` subclasses :class:`odeserve.StepSizeController`; it is constructed once per solve
    with ``error_exponent`` (the embedded estimate's order + 1), ``dtype``, ``device`` and the
    user's ``controller_options``, and its ``adapt(dt, ratio, memory, accept)`` returns the
    step-size factor and new memory as tensors (no Python branches on values).
    """


@hookspec
def odeserve_register_sensitivities(register: "Registrar") -> None:
    """Add sensitivity (gradient) methods with ``register.add_sensitivity(name, cls)``.

    ``cls`` subclasses :class:`odeserve.Sensitivity`; ``solve(..., sensitivity=name)``
    picks it.  It receives the prepared, fully resolved problem and decides how the
    backward pass runs (through the solver's operations, a back-solve, a replay, ...).
    """
