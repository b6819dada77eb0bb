"""diffrax under ``jax.jit``: the JAX peer of the latency benchmark, on the same problems.

:func:`jax_mlp` rebuilds a :class:`common.TimeConcatMLP` in JAX from the PyTorch module's
weights (the same numbers, so both libraries solve the same ODE), and :func:`diffrax_solve`
makes a jitted ``y0 ↦ y(t1)`` around ``diffrax.diffeqsolve``: Dopri5/Tsit5 with a
``PIDController`` or any solver with ``ConstantStepSize``.  The whole solve is one XLA
program; :meth:`JaxSolve.compile` lowers and compiles it ahead of time, so the compile cost
is reported apart from the run time.

Threads: importing this module sets XLA's CPU backend to one Eigen thread (``XLA_FLAGS``,
which must be set before jax is imported: import this module before anything imports jax)
and turns off JAX's asynchronous CPU dispatch (3× faster for a sub-millisecond solve here).
Even so, XLA:CPU (jax 0.10) still runs large programs on a thread of its own pool while the
caller waits, unless the process may use only one CPU: :func:`pin_to_one_cpu` (call it
before the first jax computation) makes every runtime in the process run on one core, and
then XLA runs inline on the calling thread.  Time with the process CPU clock
(``time.process_time``), never the thread clock: at batch 512 the thread clock saw 40 % of
diffrax's work.

Controller: diffrax's ``PIDController`` defaults to pure integral control (``pcoeff=0,
icoeff=1``); :data:`CONTROLLERS` also gives the PI gains of odeserve's default controller
(Hairer's β1 = 0.85, β2 = 0.2, in diffrax's terms ``pcoeff = β2``, ``icoeff = β1 − β2``).
Two differences remain between the libraries' step control: diffrax never shrinks the step
after an accepted step (factor ≥ 1) and caps the factor at ``safety`` after a rejection;
odeserve clips to ``[0.2, 10]`` after an accept and to ``≤ 1`` after a rejection.  Step
counts are reported next to every time for that reason.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

# Before jax is imported anywhere: one Eigen/XLA intra-op thread, CPU only.
_flags = os.environ.get("XLA_FLAGS", "")
for _flag in ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"):
    if _flag.split("=")[0] not in _flags:
        _flags = f"{_flags} {_flag}".strip()
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_cpu_enable_async_dispatch", False)

import diffrax  # noqa: E402

__all__ = ["CONTROLLERS", "JaxSolve", "diffrax_solve", "jax_mlp", "pin_to_one_cpu", "versions"]


def pin_to_one_cpu() -> int | None:
    """Restrict this process to one CPU (the last it may use); returns it (None where the
    OS has no affinity call).  XLA sizes its thread pool when its CPU client starts, on the
    first computation, so call this before any."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpu = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {cpu})
    return cpu

#: diffrax PIDController gains: "i" is diffrax's default; "pi" is odeserve's default PI.
CONTROLLERS: dict[str, dict[str, float]] = {
    "i": {"pcoeff": 0.0, "icoeff": 1.0},
    "pi": {"pcoeff": 0.2, "icoeff": 0.65},
}

SOLVERS: dict[str, Callable[[], Any]] = {
    "dopri5": diffrax.Dopri5,
    "tsit5": diffrax.Tsit5,
    # diffrax has no classic RK4 class; its ERK machinery with the classic tableau is the
    # same method (see _rk4()).
    "rk4": lambda: _rk4(),
}


def versions() -> dict[str, str]:
    import equinox

    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "diffrax": diffrax.__version__,
            "equinox": equinox.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "async_dispatch": str(jax.config.values["jax_cpu_enable_async_dispatch"])}


def _rk4() -> Any:
    """Classic RK4 through diffrax's explicit RK base class (diffrax ships no RK4)."""
    from diffrax._solver.runge_kutta import AbstractERK, ButcherTableau

    classic = ButcherTableau(
        c=np.array([0.5, 0.5, 1.0]),
        b_sol=np.array([1 / 6, 1 / 3, 1 / 3, 1 / 6]),
        b_error=np.zeros(4),  # no embedded pair: only ever run with ConstantStepSize
        a_lower=(np.array([0.5]), np.array([0.0, 0.5]), np.array([0.0, 0.0, 1.0])),
    )

    # ClassVar is imported at module level: dataclasses (equinox modules) recognise a string
    # annotation as a class variable only through the module's globals.
    class RK4(AbstractERK):
        tableau: ClassVar[ButcherTableau] = classic
        interpolation_cls: ClassVar[Callable[..., Any]] = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

        def order(self, terms: Any) -> int:
            return 4

    return RK4()


def jax_mlp(module: Any, dtype: Any = None) -> Callable[[Any, Any, Any], Any]:
    """``f(t, y, args)`` for diffrax: :class:`common.TimeConcatMLP`'s forward in jax.numpy
    with ``module``'s weights (``y`` is ``(batch, dim)``, ``t`` a scalar for the batch)."""
    def arr(p: Any) -> Any:
        a = p.detach().cpu().numpy()
        return jnp.asarray(a, dtype=dtype or a.dtype)

    w1, b1 = arr(module.l1.weight).T, arr(module.l1.bias)
    w2, b2 = arr(module.l2.weight).T, arr(module.l2.bias)
    w3, b3 = arr(module.l3.weight).T, arr(module.l3.bias)

    def f(t: Any, y: Any, args: Any) -> Any:
        tt = jnp.broadcast_to(jnp.asarray(t, y.dtype), (y.shape[0], 1))
        h = jnp.tanh(jnp.concatenate([y, tt], axis=1) @ w1 + b1)
        h = jnp.tanh(h @ w2 + b2)
        return h @ w3 + b3

    return f


@dataclass
class JaxSolve:
    """A jitted ``y0 ↦ (y(t1), num_steps, num_accepted_steps)``; ``compile(y0)`` builds it
    ahead of time for ``y0``'s shape and returns the seconds that took."""

    fn: Callable[[Any], Any]
    description: dict[str, Any]
    compiled: Any = None
    compile_seconds: float | None = None
    evals_per_step: int = 6
    stats: dict[str, int] = field(default_factory=dict)

    def compile(self, y0: Any) -> float:
        t = time.perf_counter()
        self.compiled = jax.jit(self.fn).lower(y0).compile()
        self.compile_seconds = time.perf_counter() - t
        return self.compile_seconds

    def __call__(self, y0: Any) -> Any:
        """The final state (blocked on: the work is done when this returns)."""
        return self.compiled(y0)[0].block_until_ready()

    def solve(self, y0: Any) -> tuple[np.ndarray, dict[str, int]]:
        """Final state as numpy and the step statistics (steps, accepted, NFE)."""
        y1, steps, accepted = self.compiled(y0)
        self.stats = {"steps": int(steps), "accepted": int(accepted)}
        return np.asarray(y1), self.stats


def diffrax_solve(
    f: Callable[[Any, Any, Any], Any], *, solver: str = "dopri5", t0: float = 0.0, t1: float = 1.0,
    rtol: float | None = None, atol: float | None = None, steps: int | None = None, controller: str = "i",
    max_steps: int = 10_000,
) -> JaxSolve:
    """``diffeqsolve(ODETerm(f), solver, t0, t1, dt0, y0, saveat=SaveAt(t1=True))``, adaptive
    (``rtol``/``atol``: ``PIDController`` with the gains of ``CONTROLLERS[controller]``,
    ``dt0=None``: diffrax picks the first step by Hairer's algorithm, like odeserve) or fixed
    (``steps``: ``ConstantStepSize``, ``dt0 = (t1 - t0) / steps``)."""
    term = diffrax.ODETerm(f)
    method = SOLVERS[solver]()
    if steps is not None:
        ctrl: Any = diffrax.ConstantStepSize()
        dt0: float | None = (t1 - t0) / steps
        desc: dict[str, Any] = {"solver": solver, "steps": steps, "controller": "ConstantStepSize"}
    else:
        assert rtol is not None and atol is not None
        ctrl = diffrax.PIDController(rtol=rtol, atol=atol, **CONTROLLERS[controller])
        dt0 = None
        desc = {"solver": solver, "rtol": rtol, "atol": atol,
                "controller": f"PIDController({', '.join(f'{k}={v}' for k, v in CONTROLLERS[controller].items())})"}

    def run(y0: Any) -> Any:
        sol = diffrax.diffeqsolve(term, method, t0, t1, dt0, y0, stepsize_controller=ctrl,
                                  saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
        return sol.ys[-1], sol.stats["num_steps"], sol.stats["num_accepted_steps"]

    evals = {"dopri5": 6, "tsit5": 6, "rk4": 4}[solver]
    return JaxSolve(run, desc, evals_per_step=evals)
