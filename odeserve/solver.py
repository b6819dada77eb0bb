"""Abstract bases of the three plugin kinds: solver, step-size controller, sensitivity.

The step loop talks to these only through the methods and capability attributes below
(``adaptive``, ``order``, ``error_order``, ``fsal``, ``evals_per_step``); it never asks a
solver for its name or class.  Every method is tensor-in, tensor-out with no Python branch
on tensor values, so one implementation serves eager PyTorch, ``torch.compile``, ONNX and
TorchScript.
"""

from __future__ import annotations

import contextlib
import threading
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Iterator, NamedTuple

import torch
from torch import Tensor

from ._interp import HermiteInterpolant

__all__ = ["Const", "Solver", "StepResult", "StepSizeController", "Sensitivity", "RHS"]

#: The loop's view of ``f``: ``rhs(t, y)`` with ``y`` the flat ``(rows, D)`` state.
RHS = Callable[[Tensor, Tensor], Tensor]


class Const:
    """A scalar constant of a solve's dtype and device; ``k()`` gives it as a 0-d tensor.

    Eager code gets one tensor made once.  While ``torch.compile`` or ``torch.export``
    traces, ``k()`` is ``torch.full`` of the value instead: an op, which Inductor writes into
    its kernels as a literal, where a captured tensor would become one more input that the
    compiled ``while_loop`` re-wraps on every iteration (dopri5 with its controller had ~40).
    Either way the value has the solve's dtype (a float64 graph keeps every digit).
    """

    __slots__ = ("value", "tensor", "_text")

    # Per thread: off inside :meth:`as_tensors` (the ONNX exporter: an ONNX ``value``
    # attribute is a float32, so a literal would round a float64 coefficient), without
    # touching a compile running in another thread at the same time.
    _local = threading.local()

    @staticmethod
    def literals() -> bool:
        """Whether constants are written as literal ops now: while tracing, outside
        :meth:`as_tensors`, in this thread."""
        return torch.compiler.is_compiling() and getattr(Const._local, "literals", True)

    def __init__(self, value: float, dtype: torch.dtype, device: torch.device) -> None:
        self.value = float(value)
        self.tensor = torch.tensor(self.value, dtype=dtype, device=device)
        # The value as text (repr round-trips a float exactly).  Dynamo treats a float it
        # reads as an input that may change, and once two compiled graphs in a process saw
        # different values at the same place (e.g. the I and the PI controller's gain) it
        # makes it symbolic: an ``.item()`` inside the loop, which Inductor cannot lower in
        # a while_loop body.  A string is always a constant to Dynamo, and ``float()`` of it
        # folds to a literal at trace time.
        self._text = repr(self.value)

    def __call__(self) -> Tensor:
        if Const.literals():
            return torch.full((), float(self._text), dtype=self.tensor.dtype, device=self.tensor.device)
        return self.tensor

    @staticmethod
    @contextlib.contextmanager
    def as_tensors() -> Iterator[None]:
        """Within: every constant is its tensor, even while tracing."""
        before = getattr(Const._local, "literals", True)
        Const._local.literals = False
        try:
            yield
        finally:
            Const._local.literals = before

    def __float__(self) -> float:
        return self.value


class StepResult(NamedTuple):
    """What one attempted step returns.  ``err`` is empty for fixed-step methods; ``ks`` are
    the stage derivatives (for dense output)."""

    y: Tensor
    f: Tensor | None
    err: tuple[Tensor, ...]
    y_mid: Tensor | None
    ks: tuple[Tensor, ...] = ()


class Solver(ABC):
    """A one-step method.  Subclasses set the class attributes and implement :meth:`step`.

    An instance is made once per solve for one dtype and device; constructors convert
    their constants to tensors of that dtype there, never inside the loop.
    """

    order: ClassVar[int]
    adaptive: ClassVar[bool] = False
    error_order: ClassVar[int | None] = None
    fsal: ClassVar[bool] = False
    #: f evaluations one attempted step costs once ``f(t, y)`` at its start is known.
    evals_per_step: ClassVar[int]
    #: f evaluations one :meth:`interpolate` call costs (DOP853's dense output: 3).
    interpolation_evals: ClassVar[int] = 0
    #: True when :meth:`step` needs ``f(t, y)`` of the step's start passed in as ``f0``.
    needs_f0: ClassVar[bool] = False
    #: True when the solver provides :meth:`backward_step` reconstructing the start state
    #: exactly (algebraically reversible schemes).
    reversible: ClassVar[bool] = False

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype
        self.device = device
        self._hermite = HermiteInterpolant(False, dtype, device)

    def const(self, value: float) -> Tensor:
        """A scalar constant of the solve's dtype and device (made once, outside loops).  In a
        compiled or exported loop a tensor becomes one more loop input; a :class:`Const`
        (called inside :meth:`step`) becomes a literal instead."""
        return torch.tensor(value, dtype=self.dtype, device=self.device)

    @abstractmethod
    def step(self, rhs: RHS, t: Tensor, y: Tensor, dt: Tensor, f0: Tensor | None) -> StepResult:
        """Advance ``y`` from ``t`` by ``dt``.

        ``t`` and ``dt`` broadcast against ``y`` (0-d for a joint batch, ``(rows, 1)`` per
        sample).  ``f0`` is ``rhs(t, y)`` when the loop carries it (adaptive solvers).
        Returns the new state, ``rhs(t + dt, y_new)`` when the method produces it (FSAL or
        adaptive), the local error estimate(s) and, if available, the solution at
        ``t + dt/2`` for dense output.
        """

    def error_ratio(self, err: tuple[Tensor, ...], scale: Tensor, mean: Callable[[Tensor], Tensor]) -> Tensor:
        """Scaled error norm of a step: ≤ 1 means accept.  ``mean`` reduces over one sample
        (or the joint batch).  The default is the RMS norm of the single estimate."""
        return torch.sqrt(mean(torch.square(err[0] / scale)))

    def augment(self, rhs: RHS, t0: Tensor, y0: Tensor) -> Tensor:
        """The loop state a fixed-step solve starts from.  Solvers that carry more than ``y``
        (reversible Heun carries ``[y, ŷ, f(ŷ)]``) concatenate it on the last axis; the
        default is ``y0`` itself."""
        return y0

    def project(self, state: Tensor, width: int) -> Tensor:
        """``y`` back from the loop state (any leading axes); inverse of :meth:`augment`."""
        return state if state.shape[-1] == width else state[..., :width]

    def interpolate(
        self, rhs: RHS, t: Tensor, dt: Tensor, y0: Tensor, f0: Tensor, res: StepResult, theta: Tensor
    ) -> Tensor:
        """Dense output of an accepted step at fractions ``theta`` (``(T, r, 1)``) of ``dt``;
        returns ``(T, rows, D)``.  Default: cubic Hermite through both ends' values and
        derivatives (local error O(dt⁴)); solvers with a better continuous extension override."""
        assert res.f is not None
        return self._hermite(theta, dt, y0, res.y, f0, res.f, None)


class StepSizeController(ABC):
    """Chooses the next step size from the error ratio of the last attempt."""

    def __init__(self, *, error_exponent: int, dtype: torch.dtype, device: torch.device, **options: Any) -> None:
        self.k = error_exponent
        self.dtype = dtype
        self.device = device

    def const(self, value: float) -> Tensor:
        """As :meth:`Solver.const` (the built-in controllers use :class:`Const`)."""
        return torch.tensor(value, dtype=self.dtype, device=self.device)

    @abstractmethod
    def init_memory(self, like: Tensor) -> Tensor:
        """Controller memory carried through the loop, shaped like ``like``."""

    @abstractmethod
    def adapt(self, dt: Tensor, ratio: Tensor, memory: Tensor, accept: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(factor, new_memory)``; the next step is ``dt * factor``.  A non-finite
        ``ratio`` must give the smallest factor (the step blew up: shrink hard)."""


class Sensitivity(ABC):
    """How gradients flow through a solve.  See :mod:`odeserve.hookspecs`."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, prepared: Any, y0: Tensor) -> tuple[Tensor, Any]:
        """Run the forward solve ``prepared.run(y0)`` (``y0`` flat, ``(rows, D)``) and make its
        outputs carry this method's backward pass.  Returns ``(ys, loop_result)`` exactly as
        :meth:`odeserve._api.PreparedSolve.run` does."""
