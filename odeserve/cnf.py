"""Continuous normalizing flows (Chen et al. 2018; FFJORD, Grathwohl et al. 2019).

A CNF moves a point by ``dz/dt = f(t, z)`` and its log-density by the instantaneous change
of variables,

    d log p(z(t))/dt = −tr(∂f/∂z(t, z(t))),

so one solve of the augmented state ``(z, Δ)`` with ``dΔ/dt = −tr(∂f/∂z)``, ``Δ(t_a) = 0``
gives ``Δ = log p_{t_b}(z(t_b)) − log p_{t_a}(z(t_a))``.

Convention (FFJORD's): data ``x`` lives at ``t = 0`` and the base distribution (standard
normal) at ``t = t1`` (default 1).  :meth:`CNF.log_prob` integrates data → base, ``0 → t1``:
``log p(x) = log N(z(t1)) − Δ``; :meth:`CNF.sample` integrates base → data, ``t1 → 0``:
``x = z(0)`` and ``log p(x) = log N(z) + Δ``.

The trace is exact (``d`` vector–Jacobian products, batched with ``vmap``: cost ∝ ``d``) or
Hutchinson's estimate ``εᵀ(∂f/∂z)ε`` (one VJP, unbiased for ``E[εεᵀ] = I``: Gaussian or
Rademacher ``ε``).  The noise is drawn once per solve and fixed for all of it: it lives on the
:class:`CNFDynamics` built for that solve, which the adjoint's backward solve reuses, so a
later draw cannot leak into an earlier solve's gradient.

The vector field ``f(t, z)`` takes ``z`` of shape ``(batch, dim)`` and ``t`` either 0-d (one
time for the batch) or ``(batch,)`` (``batch="per_sample"`` and the exported graphs), and must
treat the rows independently (no batch norm): the traces read the Jacobian's diagonal blocks
from VJPs of the whole batch.

Export (exact trace, fixed step): the dynamo exporter traces a ``torch.while_loop`` body
with dynamo, which rejects ``torch.func`` transforms there ("attempted to apply meta
conversion to view functorch tensor") and ``torch.autograd.grad`` ("trace_autograd_ops");
``jacrev``/``jacfwd``/per-dimension ``jvp`` fail too.  So :meth:`CNF.lowered_dynamics` first
traces the exact-trace field with ``make_fx`` (symbolic batch size) into a graph of plain ATen
operations (the VJPs become ``mm``/``tanh_backward``/...), which exports inside the ONNX
``Loop`` like any ``f``; :meth:`CNF.to_onnx` hands it to :func:`odeserve.export.to_onnx`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ._api import solve
from .errors import InvalidOptionError, ShapeMismatchError, SolveFailedError

__all__ = [
    "CNF",
    "CNFDynamics",
    "OnnxCNF",
    "exact_trace",
    "hutchinson_trace",
    "draw_noise",
    "standard_normal_log_prob",
]

TRACES = ("exact", "hutchinson")
NOISES = ("gaussian", "rademacher")
Field = Callable[[Tensor, Tensor], Tensor]


def exact_trace(f: Field, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """``f(t, z)`` and ``tr(∂f/∂z)`` per row, from ``d`` VJPs with the basis vectors (one
    ``vmap``-batched backward pass); ``z`` is ``(batch, d)``."""
    fz, pull = torch.func.vjp(lambda x: f(t, x), z)
    d = z.shape[-1]
    basis = torch.eye(d, dtype=z.dtype, device=z.device).unsqueeze(1).expand((d,) + tuple(z.shape))
    (rows,) = torch.func.vmap(pull)(basis)  # rows[i, b] = e_iᵀ ∂f_b/∂z_b
    return fz, torch.diagonal(rows, dim1=0, dim2=-1).sum(-1)


def hutchinson_trace(f: Field, t: Tensor, z: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """``f(t, z)`` and Hutchinson's ``εᵀ(∂f/∂z)ε`` per row, from one VJP."""
    fz, e_jac = _vjp(f, t, z, noise)
    return fz, (e_jac * noise).sum(-1)


def _vjp(f: Field, t: Tensor, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``f(t, z)`` and ``vᵀ∂f/∂z``.  Inside a ``torch.func`` transform (the adjoint's VJP of
    the dynamics) with ``torch.func.vjp``; otherwise with ``torch.autograd.grad``, about
    twice as fast for one product, keeping the graph when gradients are being recorded."""
    if torch._C._are_functorch_transforms_active():
        fz, pull = torch.func.vjp(lambda x: f(t, x), z)
        return fz, pull(v)[0]
    record = torch.is_grad_enabled()
    with torch.enable_grad():
        zz = z if z.requires_grad else z.detach().requires_grad_()
        fz = f(t, zz)
        if not fz.requires_grad:
            return fz, torch.zeros_like(z)
        (g,) = torch.autograd.grad(fz, zz, v, create_graph=record, allow_unused=True, materialize_grads=True)
    return (fz, g) if record else (fz.detach(), g)


def draw_noise(like: Tensor, kind: str = "gaussian", generator: torch.Generator | None = None) -> Tensor:
    """Probe vectors shaped like ``like`` with ``E[εεᵀ] = I``: standard normal or ±1."""
    if kind == "gaussian":
        return torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, device=like.device, generator=generator)
        return (2 * bits - 1).to(like.dtype)
    raise InvalidOptionError(f"noise must be one of {NOISES}, got {kind!r}")


def standard_normal_log_prob(z: Any) -> Any:
    """``log N(z; 0, I)`` per row of a ``(batch, d)`` tensor (or numpy array)."""
    return -0.5 * (z * z).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class CNFDynamics(nn.Module):
    """The augmented vector field ``(t, (z, Δ)) ↦ (f(t, z), −tr ∂f/∂z)``.

    An ``nn.Module`` holding ``f``, so sensitivity methods find ``f``'s parameters.  With
    ``trace="hutchinson"``, ``noise`` (shaped like ``z``) is the probe for the whole solve.
    """

    def __init__(self, f: nn.Module, trace: str = "exact", noise: Tensor | None = None) -> None:
        super().__init__()
        if trace not in TRACES:
            raise InvalidOptionError(f"trace must be one of {TRACES}, got {trace!r}")
        if trace == "hutchinson" and noise is None:
            raise InvalidOptionError("trace='hutchinson' needs the probe noise for the solve (see draw_noise)")
        self.f = f
        self.trace = trace
        self.noise = noise

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        z = state[0]
        if self.trace == "exact":
            fz, tr = exact_trace(self.f, t, z)
        else:
            assert self.noise is not None
            fz, tr = hutchinson_trace(self.f, t, z, self.noise)
        return fz, -tr


class _Lowered(nn.Module):
    """A ``make_fx`` graph of :class:`CNFDynamics` with its tensors as this module's (frozen)
    parameters: plain ATen operations, which ``torch.export`` accepts inside a while loop."""

    def __init__(self, graph: nn.Module, tensors: Sequence[Tensor]) -> None:
        super().__init__()
        self.graph = graph
        self.tensors = nn.ParameterList([nn.Parameter(p.detach().clone(), requires_grad=False) for p in tensors])

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        return self.graph(t, state[0], state[1], *self.tensors)


class CNF(nn.Module):
    """A continuous normalizing flow with a standard-normal base at ``t1`` and data at 0.

    f: the vector field ``f(t, z)``, an ``nn.Module`` (``z``: ``(batch, dim)``; see the module
        docstring for ``t``'s shape).
    dim: the data dimension (for :meth:`sample`).
    t1: the integration time.
    trace: ``"exact"`` or ``"hutchinson"`` (the default for :meth:`log_prob`; each call may
        override it).  noise: Hutchinson's probes, ``"gaussian"`` or ``"rademacher"``.
    solve_options: passed to :func:`odeserve.solve` (default ``solver="dopri5"``,
        ``rtol=atol=1e-5``); e.g. ``sensitivity="adjoint"`` or ``"checkpoint"`` with
        ``sensitivity_options``, or ``solver="rk4", steps=N``.
    """

    def __init__(
        self,
        f: nn.Module,
        dim: int,
        *,
        t1: float = 1.0,
        trace: str = "exact",
        noise: str = "gaussian",
        **solve_options: Any,
    ) -> None:
        super().__init__()
        if trace not in TRACES:
            raise InvalidOptionError(f"trace must be one of {TRACES}, got {trace!r}")
        if noise not in NOISES:
            raise InvalidOptionError(f"noise must be one of {NOISES}, got {noise!r}")
        if not (isinstance(dim, int) and dim >= 1):
            raise InvalidOptionError(f"dim must be a positive integer, got {dim!r}")
        if not (math.isfinite(t1) and t1 > 0):
            raise InvalidOptionError(f"t1 must be positive and finite, got {t1!r}")
        self.f = f
        self.dim = dim
        self.t1 = float(t1)
        self.trace = trace
        self.noise = noise
        self.solve_options: dict[str, Any] = {"solver": "dopri5", "rtol": 1e-5, "atol": 1e-5, **solve_options}

    # ---------------------------------------------------------------- integration

    def dynamics(self, like: Tensor, trace: str | None = None, noise: Tensor | None = None) -> CNFDynamics:
        """The augmented field for one solve of the batch ``like``; Hutchinson's probe is
        ``noise`` or a fresh draw."""
        trace = trace or self.trace
        if trace != "hutchinson":
            return CNFDynamics(self.f, trace)
        if noise is None:
            noise = draw_noise(like, self.noise)
        elif noise.shape != like.shape:
            raise ShapeMismatchError(f"noise has shape {tuple(noise.shape)}; it must match z's {tuple(like.shape)}")
        return CNFDynamics(self.f, trace, noise)

    def flow(
        self, z: Tensor, *, reverse: bool = False, trace: str | None = None, noise: Tensor | None = None, **options: Any
    ) -> tuple[Tensor, Tensor]:
        """Integrate ``z`` from 0 to ``t1`` (data → base) or, with ``reverse``, from ``t1`` to 0;
        returns the end point and ``Δ`` (the log-density at the end minus that at the start)."""
        self._check(z)
        dyn = self.dynamics(z, trace, noise)
        span = [self.t1, 0.0] if reverse else [0.0, self.t1]
        opts = {**self.solve_options, **options}
        if dyn.noise is not None and opts.get("batch") == "per_sample":
            # The probe has one row per sample: f must keep seeing every row.
            if opts.setdefault("compact", False):
                raise InvalidOptionError("Hutchinson's trace with batch='per_sample' needs compact=False "
                                         "(the probe is fixed per sample, so finished rows cannot be dropped)")
        sol = solve(dyn, (z, z.new_zeros(z.shape[0])), span, **opts)
        end, delta = sol.ys
        return end[-1], delta[-1]

    def log_prob(self, x: Tensor, *, trace: str | None = None, noise: Tensor | None = None, **options: Any) -> Tensor:
        """``log p(x)`` per row of the data batch ``x`` (``(batch, dim)``)."""
        z, delta = self.flow(x, trace=trace, noise=noise, **options)
        return standard_normal_log_prob(z) - delta

    def forward(self, x: Tensor) -> Tensor:
        return self.log_prob(x)

    def sample(
        self,
        n: int | None = None,
        *,
        z: Tensor | None = None,
        generator: torch.Generator | None = None,
        with_log_prob: bool = False,
        **options: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples: base draws (or the given ``z``) integrated ``t1 → 0``.  With
        ``with_log_prob`` also their exact log-density (one exact-trace solve); without it
        only ``z`` is integrated."""
        if z is None:
            if n is None:
                raise InvalidOptionError("sample needs n (how many) or z (the base draws)")
            p = next(iter(self.f.parameters()), None)
            device = p.device if p is not None else None
            z = torch.randn(n, self.dim, dtype=self._dtype(), device=device, generator=generator)
        self._check(z)
        if with_log_prob:
            x, delta = self.flow(z, reverse=True, trace="exact", **options)
            return x, standard_normal_log_prob(z) + delta
        sol = solve(self.f, z, [self.t1, 0.0], **{**self.solve_options, **options})
        return sol.ys[-1]

    def _dtype(self) -> torch.dtype:
        p = next((p for p in self.f.parameters() if p.is_floating_point()), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    def _check(self, z: Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ShapeMismatchError(f"a CNF of dim {self.dim} takes (batch, {self.dim}) tensors, got {tuple(z.shape)}")

    # ---------------------------------------------------------------- export

    def lowered_dynamics(self, dtype: torch.dtype | None = None) -> nn.Module:
        """The exact-trace augmented field as a plain ATen graph (``make_fx``, batch size
        symbolic), with ``t`` per sample ``(batch,)``: what :func:`odeserve.export.to_onnx`
        can put inside an ONNX ``Loop``.  A snapshot of the current weights, in eval mode."""
        from torch.fx.experimental.proxy_tensor import make_fx

        tensors = dict(self.f.named_parameters())
        tensors.update(dict(self.f.named_buffers()))
        dtype = dtype or self._dtype()
        names = list(tensors)
        values = [v.detach().to(dtype) if v.is_floating_point() else v.detach() for v in tensors.values()]
        dyn = CNFDynamics(self.f, "exact")

        def field(t: Tensor, z: Tensor, delta: Tensor, *vals: Tensor) -> tuple[Tensor, Tensor]:
            return torch.func.functional_call(dyn, {"f." + k: v for k, v in zip(names, vals)}, (t, (z, delta)))

        # A batch size unlike every other size in the example, so that symbolic tracing
        # (which gives equal sizes one symbol) keeps the batch independent of them.
        sizes = {self.dim} | {s for v in values for s in v.shape}
        rows = next(b for b in range(3, 10_000) if b not in sizes)
        example = torch.randn(rows, self.dim, dtype=dtype)
        was_training = self.f.training
        self.f.eval()
        try:
            graph = make_fx(field, tracing_mode="symbolic")(
                torch.zeros(rows, dtype=dtype), example, torch.zeros(rows, dtype=dtype), *values
            )
        finally:
            self.f.train(was_training)
        return _Lowered(graph, values)

    def to_onnx(self, path: str | Path, *, steps: int = 32, solver: str = "rk4", **export_options: Any) -> Any:
        """Export the exact-trace flow as one ONNX file serving both :meth:`sample` and
        :meth:`log_prob`: a fixed-step solve of ``(z, Δ)`` through
        :func:`odeserve.export.to_onnx` (one ONNX ``Loop``, any batch size, checked against
        the eager solve) whose time span is an input, so the same graph integrates
        ``t1 → 0`` (sampling) and ``0 → t1`` (density).  Run it with :class:`OnnxCNF`.
        ``export_options`` go to ``to_onnx`` (``dtype``, ``opset``, ``parity_batches``, ...).
        Returns the ``OnnxExport``."""
        from odeserve.export.onnx import to_onnx

        dtype = export_options.pop("dtype", None) or self._dtype()
        g = torch.Generator().manual_seed(int(export_options.pop("seed", 0)))
        x = torch.randn(8, self.dim, dtype=torch.float64, generator=g).to(dtype)
        export_options.setdefault("state_names", ["z", "delta"])
        return to_onnx(self.lowered_dynamics(dtype), (x, x.new_zeros(8)), path, solver=solver, steps=steps,
                       t0=0.0, t1=self.t1, dynamic_times=True, dtype=dtype, **export_options)


class OnnxCNF:
    """A CNF exported by :meth:`CNF.to_onnx`, run in ONNX Runtime (numpy in, numpy out).

    The graph integrates ``(z, Δ)`` over the span it is given; this class picks the span
    (``t1 → 0`` to sample, ``0 → t1`` for densities) and adds the base log-density (standard
    normal) around the solve.  ``options`` go to :class:`odeserve.export.OnnxModel`.
    """

    def __init__(self, path: str | Path, **options: Any) -> None:
        from odeserve.export import OnnxModel

        self.model = OnnxModel(path, **options)
        self.t1 = float(self.model.metadata["t1"])

    def sample(self, z: Any) -> tuple[Any, Any]:
        """Data samples from base draws ``z`` (``(batch, dim)``) and their log-density."""
        z = np.asarray(z, dtype=self.model.dtype)
        x, delta = self._solve(z, self.t1, 0.0)
        return x, standard_normal_log_prob(z) + delta

    def log_prob(self, x: Any) -> Any:
        """``log p(x)`` per row."""
        x = np.asarray(x, dtype=self.model.dtype)
        z, delta = self._solve(x, 0.0, self.t1)
        return standard_normal_log_prob(z) - delta

    def _solve(self, y: Any, t0: float, t1: float) -> tuple[Any, Any]:
        # The session directly: OnnxModel's input check turns a 0-d time into shape (1,)
        # (np.ascontiguousarray), which the graph then broadcasts wrongly.
        names = self.model.state_inputs
        feeds = {names[0]: np.ascontiguousarray(y), names[1]: np.zeros(y.shape[0], dtype=y.dtype),
                 "t0": np.array(t0, dtype=y.dtype), "t1": np.array(t1, dtype=y.dtype)}
        out = dict(zip([o.name for o in self.model.outputs], self.model.session.run(None, feeds)))
        if bool((out["status"] != 0).any()):
            raise SolveFailedError(f"the exported CNF solve failed (status codes {sorted(set(out['status'].tolist()))})", None)
        return out[self.model.state_outputs[0]], out[self.model.state_outputs[1]]
