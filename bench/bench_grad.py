"""Gradient benchmark: odeserve's sensitivity methods vs torchdiffeq and torchode (CPU, float64).

Problem: the time-concat MLP of ``common.make_mlp`` (state/hidden 2/64 and 64/256), batch 32,
float64, y0 = ``common.mlp_y0``, t ∈ [0, 1], loss = sum(y(T)²), gradient w.r.t. every MLP
parameter and y0.  dopri5 at rtol 1e-5 (atol 1e-7) and rtol 1e-8 (atol 1e-10); reference
gradient = odeserve ``autograd`` (backprop through the solver) at rtol 1e-10, atol 1e-12
(cross-checked against torchdiffeq backprop at the same tolerances).

Methods (fwd+bwd = one ``torch.autograd.grad`` of the loss):

* odeserve ``solve(..., sensitivity=...)``: ``autograd``, ``adjoint``, ``adjoint`` with
  ``seminorm=True``, ``checkpoint``, ``forward`` (2/64 only: its backward solves one tangent
  per input: 4,548 directions at 2/64, 99,200 at 64/256 — 1.6 GB per stored state), and
  ``reversible`` (solver ``reversible_heun`` with a fixed step count, see REVERSIBLE_STEPS);
* torchdiffeq ``odeint`` (backprop) and ``odeint_adjoint`` with and without
  ``adjoint_options=dict(norm="seminorm")``;
* torchode ``AutoDiffAdjoint`` (backprop), ``BacksolveAdjoint`` (its per-sample adjoint:
  every sample carries its own copy of the parameter adjoint) and ``JointBacksolveAdjoint``.

Reported per (size, rtol, method): relative gradient error vs the reference (parameters and y0
separately), f calls in the forward and in the backward pass (counted by a wrapper around f:
one batched call = 1, a ``vmap``-ed call = 1), CPU time of fwd+bwd (median, round robin over
all methods of a case), that time ÷ torchdiffeq backprop's in the same rounds (paired
median), and peak memory of one fwd+bwd in a fresh subprocess.

Memory growth: MLP 2/64 made *damped* (f(t, z) = mlp(t, z) − z; the plain ×2-init field drifts
linearly once its tanh units saturate and then takes only 5 → 27 steps for t1 = 1 → 100),
t1 = 1, 10, 100, each method's peak memory in a fresh subprocess.

Peak memory: ``python bench/bench_grad.py --one CONFIG_JSON`` imports only what the config
needs, builds the model, runs one short warm-up fwd+bwd of the same method (t1/50, so lazy
imports and one-time allocations land in the baseline), then reads
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the baseline), runs the measured fwd+bwd once
and reads ru_maxrss again: peak − baseline is what the solve and its gradient added.

Usage: python bench/bench_grad.py [--quick] [--repeats N] [--jobs J] [--no-memory]
Writes bench/results/grad.json and grad.md (grad_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MLP_SIZES,
    environment,
    fmt,
    make_mlp,
    md_table,
    mlp_y0,
    time_alternating,
    write_json,
    write_text,
)

BATCH = 32
DTYPE = torch.float64
TOLS = {"1e-5": (1e-5, 1e-7), "1e-8": (1e-8, 1e-10)}
REF_TOL = (1e-10, 1e-12)
MAX_STEPS = 100_000
# reversible_heun steps per unit time, chosen so that its gradient error is about dopri5's at
# rtol 1e-5 / 1e-8 (calibrated on both MLP sizes; see grad.md).
REVERSIBLE_STEPS = {"1e-5": 200, "1e-8": 6400}
MEMORY_T1 = (1.0, 10.0, 100.0)
WARMUP_FRACTION = 50.0  # the memory warm-up solves over [0, t1 / 50]

METHODS = [
    # (key, library, label)
    ("os_autograd", "odeserve", "odeserve autograd"),
    ("os_adjoint", "odeserve", "odeserve adjoint"),
    ("os_adjoint_sn", "odeserve", "odeserve adjoint, seminorm"),
    ("os_checkpoint", "odeserve", "odeserve checkpoint"),
    ("os_forward", "odeserve", "odeserve forward"),
    ("os_reversible", "odeserve", "odeserve reversible (reversible_heun)"),
    ("tdq_backprop", "torchdiffeq", "torchdiffeq odeint (backprop)"),
    ("tdq_adjoint", "torchdiffeq", "torchdiffeq odeint_adjoint"),
    ("tdq_adjoint_sn", "torchdiffeq", "torchdiffeq odeint_adjoint, seminorm"),
    ("to_autodiff", "torchode", "torchode AutoDiffAdjoint (backprop)"),
    ("to_backsolve", "torchode", "torchode BacksolveAdjoint"),
    ("to_joint_backsolve", "torchode", "torchode JointBacksolveAdjoint"),
]
LABEL = {k: label for k, _, label in METHODS}
LIB = {k: lib for k, lib, _ in METHODS}
BASELINE = "tdq_backprop"


# --------------------------------------------------------------------------- problem


class Field(nn.Module):
    """``f(t, z) = mlp(t, z) − damping·z``, counting its calls.

    Accepts one sample (``z`` of shape ``(D,)``, 0-d ``t``) as well as a batch, because
    torchode's BacksolveAdjoint ``vmap``s f over the samples."""

    def __init__(self, mlp: nn.Module, damping: float = 0.0) -> None:
        super().__init__()
        self.mlp = mlp
        self.damping = damping
        self.calls = 0

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        self.calls += 1
        if z.ndim == 1:
            return self.forward_batch(t.reshape(1), z.unsqueeze(0)).squeeze(0)
        return self.forward_batch(t, z)

    def forward_batch(self, t: Tensor, z: Tensor) -> Tensor:
        out = self.mlp(t, z)
        return out - self.damping * z if self.damping else out


def make_problem(size: str, damping: float = 0.0) -> tuple[Field, Tensor, list[Tensor]]:
    dim, hidden = MLP_SIZES[size]
    mlp = make_mlp(dim, hidden, dtype=DTYPE).requires_grad_(True)
    f = Field(mlp, damping)
    y0 = mlp_y0(BATCH, dim, dtype=DTYPE).requires_grad_(True)
    return f, y0, list(f.parameters())


# --------------------------------------------------------------------------- methods


def method_fn(key: str, f: Field, y0: Tensor, t1: float, tol: str | tuple[float, float]) -> Callable[[], Tensor]:
    """A callable returning y(T) (differentiable) for method ``key``."""
    rtol, atol = TOLS[tol] if isinstance(tol, str) else tol
    t = torch.tensor([0.0, t1], dtype=DTYPE)
    if LIB[key] == "odeserve":
        import odeserve

        kw: dict[str, Any] = dict(solver="dopri5", rtol=rtol, atol=atol, max_steps=MAX_STEPS)
        sens, opts = {
            "os_autograd": ("autograd", None), "os_adjoint": ("adjoint", None),
            "os_adjoint_sn": ("adjoint", {"seminorm": True}), "os_checkpoint": ("checkpoint", None),
            "os_forward": ("forward", None), "os_reversible": ("reversible", None),
        }[key]
        if key == "os_reversible":
            assert isinstance(tol, str), tol
            kw = dict(solver="reversible_heun", steps=max(1, round(REVERSIBLE_STEPS[tol] * t1)), max_steps=10**7)
        return lambda: odeserve.solve(f, y0, t, sensitivity=sens, sensitivity_options=opts, **kw).ys[-1]
    if LIB[key] == "torchdiffeq":
        from torchdiffeq import odeint, odeint_adjoint

        kw = dict(method="dopri5", rtol=rtol, atol=atol)
        if key == "tdq_backprop":
            return lambda: odeint(f, y0, t, **kw)[-1]
        if key == "tdq_adjoint_sn":
            kw["adjoint_options"] = dict(norm="seminorm")
        return lambda: odeint_adjoint(f, y0, t, **kw)[-1]
    import torchode as to

    term = to.ODETerm(f)
    step = to.Dopri5(term=term)
    ctrl = to.IntegralController(atol=atol, rtol=rtol, term=term)
    if key == "to_autodiff":
        solver: Any = to.AutoDiffAdjoint(step, ctrl)
    elif key == "to_backsolve":
        solver = to.BacksolveAdjoint(term, step, ctrl)
    else:
        solver = to.JointBacksolveAdjoint(term, step, ctrl)
    ts = torch.zeros(BATCH, dtype=DTYPE)
    te = torch.full((BATCH,), t1, dtype=DTYPE)

    def run() -> Tensor:
        sol = solver.solve(to.InitialValueProblem(y0=y0, t_start=ts, t_end=te))
        if not bool((sol.status == 0).all()):
            raise RuntimeError(f"torchode {key} failed: status {sol.status.unique().tolist()}")
        return sol.ys[:, -1]

    return run


def grad_fn(run: Callable[[], Tensor], f: Field, y0: Tensor, params: list[Tensor]) -> Callable[[], dict[str, Any]]:
    """fwd + bwd of loss = sum(y(T)²): gradients and the f calls of each pass."""

    def go() -> dict[str, Any]:
        c0 = f.calls
        yT = run()
        loss = (yT * yT).sum()
        c1 = f.calls
        grads = torch.autograd.grad(loss, [*params, y0])
        return {"grads": grads, "nfe_fwd": c1 - c0, "nfe_bwd": f.calls - c1, "loss": float(loss)}

    return go


def available(key: str, size: str) -> bool:
    return not (key == "os_forward" and size != "2/64")


def rel_err(g: tuple[Tensor, ...], ref: tuple[Tensor, ...]) -> tuple[float, float]:
    """Relative 2-norm errors of the parameter gradient (all parameters flattened) and of y0's."""
    gp = torch.cat([x.reshape(-1) for x in g[:-1]])
    rp = torch.cat([x.reshape(-1) for x in ref[:-1]])
    return float((gp - rp).norm() / rp.norm()), float((g[-1] - ref[-1]).norm() / ref[-1].norm())
