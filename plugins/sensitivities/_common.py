"""What the sensitivity methods share: option checking, the tensors they differentiate, the
refusal to differentiate a failed solve, the VJP of ``f``, and the fixed-grid replay that
``checkpoint`` (stored states) and ``reversible`` (reconstructed states) both run."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from odeserve._api import PreparedSolve, _finite_status, make_rhs
from odeserve._loop import FixedGrid, LoopResult, Problem
from odeserve.errors import InvalidOptionError, SolveFailedError
from odeserve.solver import RHS, Solver

__all__ = [
    "ResultBox",
    "parse_options",
    "adjoint_params_option",
    "differentiated_params",
    "method_params",
    "refuse_failed",
    "module_names",
    "functional_rhs",
    "pinned",
    "RhsVJP",
    "SeminormProblem",
    "output_grid_points",
    "fixed_result",
    "replay_fixed",
    "add_grads",
]


class ResultBox:
    """Carries the forward's :class:`LoopResult` out of an ``autograd.Function`` (which may
    return only tensors).  A plain class: torch.func would rebuild a dict or list argument."""

    res: LoopResult


def parse_options(method: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` updated with ``options``; an unknown name raises, naming the known ones."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise InvalidOptionError(f"sensitivity {method!r} got unknown option(s) {unknown}; it takes: {known}")
    return {**defaults, **options}


def adjoint_params_option(value: Any, method: str) -> tuple[Tensor, ...] | None:
    """The ``adjoint_params`` option as a tuple (a generator such as ``model.parameters()``
    would be used up by the first solve)."""
    if value is None:
        return None
    items = None if isinstance(value, Tensor) else tuple(value)
    if items is None or not all(isinstance(p, Tensor) for p in items):
        raise InvalidOptionError(
            f"sensitivity {method!r}: adjoint_params must be a sequence of tensors (e.g. model.parameters())"
        )
    return items


def differentiated_params(f: Any, listed: Sequence[Tensor] | None) -> list[Tensor]:
    """The tensors besides ``y0`` a backward pass differentiates: ``listed`` (``adjoint_params``)
    or, by default, the parameters of ``f`` when it is an ``nn.Module``; only those that
    require grad, each once."""
    if listed is None:
        candidates = list(f.parameters()) if isinstance(f, nn.Module) else []
    else:
        candidates = list(listed)
    seen: set[int] = set()
    out = []
    for p in candidates:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def method_params(method: str, prepared: PreparedSolve, y0: Tensor, listed: Sequence[Tensor] | None) -> list[Tensor] | None:
    """The tensors a sensitivity method's backward pass differentiates besides ``y0``
    (:func:`differentiated_params`), or ``None`` when it has nothing to do (grad mode off,
    or neither ``y0`` nor any of them requires grad: the plain solve runs, and autograd
    through it reaches any other tensor ``f`` reads).

    A method that back-solves or replays from these tensors alone would give a tensor ``f``
    reads without them (a closure over a weight, the output of an encoder) no gradient,
    silently: an evaluation of ``f`` at ``t0`` from a detached ``y0`` finds the leaves of its
    autograd graph that are not among them (a second one tells them from leaves ``f`` makes
    for itself), and those are refused, naming their shapes."""
    if not torch.is_grad_enabled():
        return None
    params = differentiated_params(prepared.f, listed)
    if not (y0.requires_grad or params):
        return None
    if not torch.compiler.is_compiling():
        with torch.enable_grad():
            out = prepared.problem.rhs(prepared.problem.t0, y0.detach())
            unlisted = _unlisted_leaves(out, params)
            if unlisted:
                # A leaf f makes for itself (a CNF's z.requires_grad_() for its trace) is a new
                # tensor on every call; what f reads from outside is the same one again.
                # (``out`` keeps the first call's leaves alive, so no id is reused.)
                again = {id(v) for v in _unlisted_leaves(prepared.problem.rhs(prepared.problem.t0, y0.detach()), params)}
                unlisted = [v for v in unlisted if id(v) in again]
        if unlisted:
            shapes = ", ".join(str(tuple(v.shape)) for v in unlisted[:5]) + (", ..." if len(unlisted) > 5 else "")
            raise InvalidOptionError(
                f"sensitivity {method!r}: f reads {len(unlisted)} tensor(s) that require grad but are not among "
                f"the tensors it differentiates (shapes {shapes}), so they would get no gradient from this solve. "
                "Make them parameters of an nn.Module f, or list them (with f's parameters) in "
                "sensitivity_options={'adjoint_params': [...]}; or use sensitivity='autograd'"
            )
    return params


def _unlisted_leaves(out: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """Leaves requiring grad in ``out``'s autograd graph that are not in ``params``; the walk
    stops at a listed tensor that is not a leaf (its own inputs are its business)."""
    if out.grad_fn is None:
        return []
    known = {id(p) for p in params}
    stops = {p.grad_fn for p in params if p.grad_fn is not None}
    found: dict[int, Tensor] = {}
    seen: set[Any] = set()
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stops:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)
        if leaf is not None and id(leaf) not in known:
            found[id(leaf)] = leaf
        stack.extend(nxt for nxt, _ in node.next_functions)
    return list(found.values())


def refuse_failed(status: Tensor, method: str) -> None:
    """Differentiating a solve that stopped early would return a gradient of the wrong thing."""
    if not bool((status == 0).all()):
        codes = sorted(set(int(c) for c in status.reshape(-1).tolist()) - {0})
        raise SolveFailedError(
            f"sensitivity {method!r} cannot differentiate a failed solve (status codes {codes}): "
            "the gradient would be silently wrong; fix the forward solve (max_steps, tolerances, dt_min)",
            None,
        )


def module_names(f: Any, params: Sequence[Tensor]) -> list[str] | None:
    """Names of ``params`` inside ``f`` (for ``functional_call``), or None when some tensor
    is not a parameter or buffer of ``f``."""
    if not isinstance(f, nn.Module):
        return None if params else []
    owned: dict[int, str] = {}
    for name, p in list(f.named_parameters(remove_duplicate=False)) + list(f.named_buffers(remove_duplicate=False)):
        owned.setdefault(id(p), name)
    if not all(id(p) in owned for p in params):
        return None
    return [owned[id(p)] for p in params]


def functional_rhs(prepared: PreparedSolve, names: Sequence[str], values: Sequence[Tensor]) -> RHS:
    """The loop's ``rhs`` with ``f``'s tensors ``names`` replaced by ``values``."""
    f = prepared.f
    if not names:
        return prepared.problem.rhs
    sub = dict(zip(names, values))
    return make_rhs(lambda t, y: torch.func.functional_call(f, sub, (t, y)), prepared.spec)


def pinned(prepared: PreparedSolve, names: Sequence[str] | None, params: Sequence[Tensor]) -> PreparedSolve:
    """``prepared`` whose ``f`` reads ``params`` (named ``names`` in ``f``, found by
    :func:`module_names` during the forward pass) even if the module's attributes have
    changed since: the backward pass may run after a ``torch.func.functional_call`` around
    the solve has returned."""
    if not names:
        return prepared
    problem = dataclasses.replace(prepared.problem, rhs=functional_rhs(prepared, names, params))
    return dataclasses.replace(prepared, problem=problem)


class RhsVJP:
    """``f(t, z)``, ``aᵀ∂f/∂z`` and ``aᵀ∂f/∂θ`` from one VJP of ``f``.

    When every differentiated tensor belongs to ``f`` (an ``nn.Module``) the VJP is
    ``torch.func.vjp`` over ``torch.func.functional_call``, which evaluates ``f`` with the
    tensors saved at forward time whatever ``f`` holds now (e.g. after a ``functional_call``
    around the solve has returned).  When ``f`` still holds exactly those tensors, unchanged
    (the usual training step), the same VJP is one ``torch.autograd.grad`` through a fresh
    graph of ``f``: identical numbers, without the transform's cost (1.5-1.8x per call on
    small MLPs, bench/results/grad.md).  Tensors ``f`` only closes over (listed in
    ``adjoint_params``) cannot be substituted, so then the VJP is always the autograd one.
    ``names`` come from :func:`module_names` at forward time.
    """

    def __init__(self, prepared: PreparedSolve, names: Sequence[str] | None, params: Sequence[Tensor]) -> None:
        self.prepared = prepared
        self.params = tuple(params)
        self.names = names
        # Made in the backward pass, after the forward returned: what f holds now is final.
        self.live = self._f_holds_params()

    def _f_holds_params(self) -> bool:
        """Whether ``f`` holds the saved tensors themselves (not functorch-wrapped stand-ins).
        In-place changes since the forward pass are refused by autograd's saved-tensor check."""
        f = self.prepared.f
        if self.names is None or not isinstance(f, nn.Module):
            return False
        if any(torch._C._functorch.is_functorch_wrapped_tensor(p) for p in self.params):
            return False
        held = dict(f.named_parameters(remove_duplicate=False)) | dict(f.named_buffers(remove_duplicate=False))
        return all(held.get(n) is p for n, p in zip(self.names, self.params))

    def __call__(self, t: Tensor, z: Tensor, a: Tensor) -> tuple[Tensor, Tensor, tuple[Tensor, ...]]:
        if self.names is not None and not self.live:
            names = self.names

            def f_flat(z: Tensor, values: tuple[Tensor, ...]) -> Tensor:
                return functional_rhs(self.prepared, names, values)(t, z)

            fz, pull = torch.func.vjp(f_flat, z, tuple(p.detach() for p in self.params))
            vz, vp = pull(a)
            return fz, vz, tuple(vp)
        with torch.enable_grad():
            zl = z.detach().requires_grad_()
            fz = self.prepared.problem.rhs(t, zl)
            grads = torch.autograd.grad(fz, (zl,) + self.params, a, allow_unused=True)
        vz = grads[0] if grads[0] is not None else torch.zeros_like(z)
        vp = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], self.params))
        return fz.detach(), vz, vp


@dataclasses.dataclass
class SeminormProblem(Problem):
    """A problem whose error norm reads only the first ``norm_width`` columns of the state
    (Kidger, Chen & Lyons, "Hey, that's not an ODE", 2021: the parameter adjoint never feeds
    back into the dynamics, so its error need not limit the step)."""

    norm_width: int = 0

    @classmethod
    def of(cls, problem: Problem, norm_width: int) -> "SeminormProblem":
        values = {f.name: getattr(problem, f.name) for f in dataclasses.fields(Problem)}
        return cls(**values, norm_width=norm_width)

    def mean(self, x: Tensor) -> Tensor:
        return super().mean(x[..., : self.norm_width])


def output_grid_points(grid: FixedGrid) -> list[int]:
    """Index into ``grid.times`` of every output time ``t[i]``."""
    return [0] + [k + 1 for k, s in enumerate(grid.slot) if s >= 0] + [grid.steps]


def fixed_result(prepared: PreparedSolve, P: Problem, ys_int: Tensor, y1: Tensor) -> LoopResult:
    """The fixed-step :class:`LoopResult`, as :meth:`PreparedSolve.run` builds it, for methods
    that drive the fixed loop themselves (they need the solver's full loop state)."""
    assert prepared.grid is not None
    n = prepared.grid.steps
    status = _finite_status(P, torch.cat([ys_int, y1.unsqueeze(0)]))
    steps = torch.full_like(status, n)
    eps = P.solver.evals_per_step
    return LoopResult(P.t1.expand_as(status), ys_int, y1, status, steps, torch.zeros_like(steps), n * eps, steps * eps)


def add_grads(acc: list[Tensor], grads: Sequence[Tensor | None]) -> None:
    for i, g in enumerate(grads):
        if g is not None:
            acc[i] = acc[i] + g


def _project_vjp(solver: Solver, state: Tensor, width: int, g: Tensor) -> Tensor:
    """Cotangent of the loop state from the cotangent ``g`` of ``solver.project(state)``."""
    if state.shape[-1] == width:
        return g
    with torch.enable_grad():
        sl = state.detach().requires_grad_()
        (out,) = torch.autograd.grad(solver.project(sl, width), sl, g)
    return out


def replay_fixed(
    prepared: PreparedSolve,
    params: Sequence[Tensor],
    y0: Tensor,
    g: Tensor,
    final_state: Tensor,
    state_before: Callable[[int, Tensor], Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """Back-propagate ``g`` (``(T, rows, D)``, the cotangent of every output) through a
    fixed-step solve one step at a time, newest first.

    ``state_before(n, s_next)`` gives the loop state at grid point ``n`` (stored or
    reconstructed from ``s_next``, the state at ``n + 1``); step ``n`` is recomputed from it
    with autograd, so the result is the gradient of the discretised solve.  Returns the
    gradients of ``y0`` and of ``params``.
    """
    P, grid = prepared.problem, prepared.grid
    assert grid is not None
    solver, width = P.solver, g.shape[-1]
    times = grid.times  # indexed per step: unbinding it up front costs ~1 KB per step
    output_at = {n: i for i, n in enumerate(output_grid_points(grid))}
    grads = [torch.zeros_like(p) for p in params]
    a = _project_vjp(solver, final_state, width, g[-1])
    s_next = final_state
    for n in range(grid.steps - 1, -1, -1):
        s = state_before(n, s_next)
        with torch.enable_grad():
            sl = s.detach().requires_grad_()
            out = solver.step(P.rhs, times[n], sl, times[n + 1] - times[n], None).y
            step_grads = torch.autograd.grad(out, (sl,) + tuple(params), a, allow_unused=True)
        a = step_grads[0] if step_grads[0] is not None else torch.zeros_like(s)
        add_grads(grads, step_grads[1:])
        if 0 < n < grid.steps and n in output_at:
            a = a + _project_vjp(solver, s, width, g[output_at[n]])
        s_next = s
    with torch.enable_grad():
        yl = y0.detach().requires_grad_()
        s0 = solver.augment(P.rhs, P.t0, yl)
        init = torch.autograd.grad(s0, (yl,) + tuple(params), a, allow_unused=True)
    add_grads(grads, init[1:])
    grad_y0 = (init[0] if init[0] is not None else torch.zeros_like(y0)) + g[0]
    return grad_y0, grads
