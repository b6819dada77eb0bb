"""``forward``: forward-mode sensitivities, the tangent ODE solved alongside the state."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from odeserve._api import PreparedSolve
from odeserve._loop import LoopResult
from odeserve.errors import InvalidOptionError
from odeserve.solver import Sensitivity

from ._common import ResultBox, functional_rhs, parse_options, refuse_failed

__all__ = ["ForwardSensitivity", "tangent_solve"]


class ForwardSensitivity(Sensitivity):
    """Pushforward of tangents along the flow: for a tangent ``v`` of ``y0`` and ``w`` of the
    parameters, ``δ(t) = ∂z(t)/∂z(t0)·v + ∂z(t)/∂θ·w`` solves

        dδ/dt = ∂f/∂z·δ + ∂f/∂θ·w,      δ(t0) = v,

    integrated together with ``z`` (one ``torch.func.jvp`` of ``f`` per evaluation, batched
    over directions with ``torch.func.vmap``; the tangents are under the solver's error
    control too).

    ``torch.func.jvp`` over ``solve(..., sensitivity="forward")`` runs one tangent solve for
    the given direction; see also :func:`odeserve.jvp`.  (``torch.autograd.forward_ad`` dual
    tensors are refused with a named error: PyTorch cannot nest ``torch.func.jvp`` inside
    their dual level.)  ``.backward()`` works as well, by forward mode: it solves for
    every input direction at once (the ``D`` state directions and every parameter element
    that needs a gradient) and contracts, so its cost grows with the number of inputs — the
    method for few inputs and many outputs.

    Differentiates ``y0`` and, when ``f`` is an ``nn.Module``, its parameters (tensors ``f``
    only closes over are constants here).  No options.  Supported: every solver, tuple
    states, both batch modes (per-sample: each sample carries its own tangents; samples must
    not interact through ``f``, as that mode already assumes); ``loop="while"`` runs as the
    Python loop here.  A failed solve makes the backward or JVP raise
    :class:`~odeserve.SolveFailedError`.
    """

    name = "forward"

    def __init__(self, **options: Any) -> None:
        parse_options(self.name, options, {})

    def run(self, prepared: Any, y0: Tensor) -> tuple[Tensor, Any]:
        f = prepared.f
        named = list(f.named_parameters()) if isinstance(f, nn.Module) else []
        box = ResultBox()
        ys = _TangentFunction.apply(prepared, box, tuple(n for n, _ in named), y0, *(p for _, p in named))
        return ys, box.res


def tangent_solve(
    prepared: PreparedSolve,
    names: Sequence[str],
    params: Sequence[Tensor],
    y0: Tensor,
    v: Tensor,
    w: Sequence[Tensor | None],
) -> tuple[Tensor, Tensor, LoopResult]:
    """Solve ``z`` with ``N`` tangents: ``v`` is ``(N, rows, D)`` (the tangents of ``y0``),
    ``w[k]`` is ``(N, *params[k].shape)`` or None (no tangent for that parameter).
    Returns ``ys`` ``(T, rows, D)``, the tangents ``(T, rows, N, D)`` and the loop result."""
    P = prepared.problem
    n_dir, rows, width = v.shape
    moving = [k for k, wk in enumerate(w) if wk is not None]
    w_moving = [w[k] for k in moving]

    def f_flat(t: Tensor, z: Tensor, *moved: Tensor) -> Tensor:
        values = list(params)
        for k, value in zip(moving, moved):
            values[k] = value
        return functional_rhs(prepared, names, values)(t, z)

    def rhs(t: Tensor, s: Tensor) -> Tensor:
        n = s.shape[0]  # per-sample solves drop finished rows
        z = s[:, :width]
        # A copy, not a view into the state: torch.func.jvp under vmap would otherwise give
        # every tangent the whole state's storage, zero-filling n_dir x state-size per
        # evaluation (10.9 GB, ~10 s at MLP 2/64 with 4,610 directions; 1.2 s with the copy).
        tangents = s[:, width:].reshape(n, n_dir, width).transpose(0, 1).clone(memory_format=torch.contiguous_format)

        def one(dz: Tensor, *dp: Tensor) -> tuple[Tensor, Tensor]:
            return torch.func.jvp(lambda z_, *p_: f_flat(t, z_, *p_), (z, *(params[k] for k in moving)), (dz, *dp))

        fz, jv = torch.func.vmap(one, out_dims=(None, 0))(tangents, *w_moving)
        return torch.cat([fz, jv.transpose(0, 1).reshape(n, n_dir * width)], dim=-1)

    s0 = torch.cat([y0, v.transpose(0, 1).reshape(rows, n_dir * width)], dim=-1)
    out, res = _eager(prepared).run(s0, dataclasses.replace(P, rhs=rhs))
    refuse_failed(res.status, ForwardSensitivity.name)
    return out[..., :width], out[..., width:].reshape(out.shape[0], rows, n_dir, width), res


def _eager(prepared: PreparedSolve) -> PreparedSolve:
    # torch.while_loop cannot trace functional_call's parameter swap: always the Python loop.
    return dataclasses.replace(prepared, loop="python")


class _TangentFunction(torch.autograd.Function):
    @staticmethod
    def forward(prepared: PreparedSolve, box: ResultBox, names: tuple[str, ...], y0: Tensor, *params: Tensor) -> Tensor:
        # Every parameter is substituted by the value passed in, so that under torch.func
        # transforms f's own (wrapped) attributes are never read here.
        problem = dataclasses.replace(prepared.problem, rhs=functional_rhs(prepared, names, params))
        ys, res = _eager(prepared).run(y0, problem)
        box.res = res
        return ys

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        prepared, box, names, y0, *params = inputs
        ctx.prepared, ctx.names, ctx.status = prepared, names, box.res.status
        ctx.save_for_backward(y0, *params)
        ctx.save_for_forward(y0, *params)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        refuse_failed(ctx.status, ForwardSensitivity.name)
        y0, *params = ctx.saved_tensors
        need_y0, need_p = ctx.needs_input_grad[3], ctx.needs_input_grad[4:]
        rows, width = y0.shape
        n_y = width if need_y0 else 0
        sizes = [p.numel() if need else 0 for p, need in zip(params, need_p)]
        n_dir = n_y + sum(sizes)
        if n_dir == 0:
            return (None,) * (4 + len(params))
        eye = torch.eye(n_dir, dtype=y0.dtype, device=y0.device)
        v = eye[:, :n_y]
        v = (v if n_y else y0.new_zeros(n_dir, width)).unsqueeze(1).expand(n_dir, rows, width)
        w: list[Tensor | None] = []
        offset = n_y
        for p, size in zip(params, sizes):
            w.append(eye[:, offset : offset + size].reshape((n_dir,) + tuple(p.shape)) if size else None)
            offset += size
        _, tangents, _ = tangent_solve(ctx.prepared, ctx.names, params, y0, v.contiguous(), w)
        grad_y0 = torch.einsum("trk,trdk->rd", g, tangents[:, :, :n_y]) if need_y0 else None
        grad_flat = torch.einsum("trk,trpk->p", g, tangents[:, :, n_y:])
        grads: list[Tensor | None] = []
        offset = 0
        for p, size in zip(params, sizes):
            grads.append(grad_flat[offset : offset + size].reshape(p.shape) if size else None)
            offset += size
        return (None, None, None, grad_y0, *grads)

    @staticmethod
    def jvp(ctx: Any, _p: Any, _b: Any, _n: Any, dy0: Tensor | None, *dparams: Tensor | None) -> Tensor:
        refuse_failed(ctx.status, ForwardSensitivity.name)
        y0, *params = ctx.saved_tensors
        v = (torch.zeros_like(y0) if dy0 is None else dy0).unsqueeze(0)
        w = [None if d is None else d.unsqueeze(0) for d in dparams]
        try:
            _, tangents, _ = tangent_solve(ctx.prepared, ctx.names, params, y0, v, w)
        except RuntimeError as exc:
            if "Nested forward mode AD" not in str(exc):
                raise
            raise InvalidOptionError(
                "sensitivity 'forward' supports torch.func.jvp (and odeserve.jvp), not torch.autograd.forward_ad "
                "dual tensors: its tangent ODE uses torch.func.jvp, which PyTorch cannot nest inside a dual level"
            ) from exc
        return tangents[:, :, 0]
