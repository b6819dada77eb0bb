"""An adaptive solve as TorchScript: the step traced, the loop scripted.

``torch.jit.trace`` records one path through Python, so a traced adaptive solve would
freeze the step count of the example (the torchdiffeq failure the export notes record).
``torch.jit.script`` keeps control flow but cannot read odeserve's solvers (dataclasses,
closures, plugin objects).  The two combine without a second copy of the maths:

* :class:`AdaptiveStepModule` — :func:`odeserve._loop.adaptive_step` (the function the eager
  loop and ``torch.while_loop`` call) with the loop state as positional tensors, traced once
  on the example's start state.  It is a pure state → state map with per-sample
  ``torch.where`` masks and no Python branch on values, so the trace is exact for any state;
  the batch is read from the tensors, so it is exact for any batch size;
* :class:`WhileRunning` — a scripted ``while any sample is RUNNING: state = step(state)``,
  the loop ``torch.while_loop`` runs in :func:`odeserve._loop.adaptive_while`, which ends
  because every sample stops (success, ``max_steps``, a too-small or non-finite step);
* :class:`ScriptedLoopSolve` — a :class:`PreparedSolve` whose ``run`` starts the loop with
  :func:`odeserve._loop.adaptive_init` and hands it to the scripted driver.  Traced inside
  :class:`odeserve.export._onnx_trace.SolveGraph` (the module every exporter traces), the
  driver is recorded as a call, its loop intact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import torch
from torch import Tensor, nn

from odeserve._api import PreparedSolve
from odeserve._loop import RUNNING, AdaptiveState, LoopResult, _output_buffer, adaptive_init, adaptive_step

from ._onnx_trace import traceable_rhs

__all__ = ["AdaptiveStepModule", "WhileRunning", "ScriptedLoopSolve", "script_adaptive"]

if len(AdaptiveState._fields) != 9:  # pragma: no cover - WhileRunning spells the state out
    raise ImportError(f"odeserve.export: WhileRunning expects a 9-field AdaptiveState, got {AdaptiveState._fields}")


class AdaptiveStepModule(nn.Module):
    """``forward(t1, t_interior, *state) -> state``: one :func:`adaptive_step` for every row.
    The span's end and the interior output times are inputs, so a graph with time inputs
    passes its own; ``f`` is a registered submodule when it is a module (its weights)."""

    def __init__(self, f: Any, prepared: PreparedSolve) -> None:
        super().__init__()
        if isinstance(f, nn.Module):
            self.f = f
        self.__dict__["fn"] = f
        self.__dict__["prepared"] = prepared

    def forward(self, t1: Tensor, t_interior: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        p = self.prepared
        y = state[1]
        P = dataclasses.replace(p.problem, rhs=traceable_rhs(self.fn, p.spec, y.new_ones(y.shape[0])), t1=t1,
                                t_interior=t_interior)
        return tuple(adaptive_step(P, AdaptiveState(*state)))


class WhileRunning(nn.Module):
    """Scripted: call the traced step until no sample is RUNNING; also returns the number of
    iterations (batched steps), first."""

    def __init__(self, step: nn.Module) -> None:
        super().__init__()
        self.step = step
        self.running = RUNNING  # an int attribute: a constant of the scripted loop

    def forward(
        self, t1: Tensor, t_interior: Tensor, t: Tensor, y: Tensor, f0: Tensor, dt: Tensor, memory: Tensor,
        status: Tensor, accepted: Tensor, rejected: Tensor, ys: Tensor,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        iters = torch.zeros((), dtype=torch.int64, device=y.device)
        while bool((status == self.running).any()):
            t, y, f0, dt, memory, status, accepted, rejected, ys = self.step(
                t1, t_interior, t, y, f0, dt, memory, status, accepted, rejected, ys)
            iters = iters + 1
        return iters, t, y, f0, dt, memory, status, accepted, rejected, ys


@dataclasses.dataclass
class ScriptedLoopSolve(PreparedSolve):
    """A prepared adaptive solve whose loop is the scripted :class:`WhileRunning` ``driver``."""

    driver: Any = None

    def run(self, y0: Tensor, problem: Any = None) -> tuple[Tensor, LoopResult]:
        P = problem or self.problem
        st, init_evals = adaptive_init(P, y0)
        st = st._replace(ys=_output_buffer(y0, P.t_interior.shape[0]))
        out = self.driver(P.t1, P.t_interior, *st)
        i, st = out[0], AdaptiveState(*out[1:])
        # As adaptive_while counts them: f evaluations per attempted step, plus dense output.
        eps = P.solver.evals_per_step + (P.solver.interpolation_evals if P.t_interior.shape[0] > 0 else 0)
        res = LoopResult(st.t, st.ys, st.y, st.status, st.accepted, st.rejected, init_evals + eps * i,
                         init_evals + eps * (st.accepted + st.rejected))
        return torch.cat([y0.unsqueeze(0), res.ys, res.y1.unsqueeze(0)]), res


def script_adaptive(f: Any, prepared: PreparedSolve, example: Any) -> ScriptedLoopSolve:
    """``prepared`` (adaptive, per sample) with its loop as TorchScript: the step traced on
    the example's start state, the driver scripted.  Call under ``torch.no_grad()``."""
    spec = prepared.spec
    y = spec.flatten(example, spec.batch)
    P = dataclasses.replace(prepared.problem, rhs=traceable_rhs(f, spec, y.new_ones(y.shape[0])))
    st, _ = adaptive_init(P, y)
    st = st._replace(ys=_output_buffer(y, P.t_interior.shape[0]))
    step = torch.jit.trace(AdaptiveStepModule(f, prepared), (P.t1, P.t_interior) + tuple(st), check_trace=False)
    driver = torch.jit.script(WhileRunning(step))
    fields = {fl.name: getattr(prepared, fl.name) for fl in dataclasses.fields(PreparedSolve)}
    return ScriptedLoopSolve(**fields, driver=driver)
