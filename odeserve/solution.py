"""What a solve returns: values at the requested times, per-sample status and statistics."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Status", "Solution"]


class Status(enum.IntEnum):
    """Per-sample outcome of a solve (``Solution.status`` holds these as int64)."""

    SUCCESS = 0
    MAX_STEPS = 1
    DT_UNDERFLOW = 2
    NONFINITE = 3
    #: Only inside the loop: the sample has not reached the final time yet.
    RUNNING = -1

    def describe(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Status.SUCCESS: "reached the final time",
    Status.MAX_STEPS: "hit max_steps before the final time (raise max_steps, loosen rtol/atol, or check f for stiffness)",
    Status.DT_UNDERFLOW: "step size fell below dt_min or below the time's floating-point resolution "
    "(the problem is stiff or singular there; loosen rtol/atol, lower dt_min, or use float64)",
    Status.NONFINITE: "produced NaN or Inf (f blew up; use a smaller step or check f)",
    Status.RUNNING: "still running",
}


@dataclass
class Solution:
    """Result of :func:`odeserve.solve`.

    ``ys``: the solution at each requested time, time on axis 0 (``(len(t), *y0.shape)``),
    a tuple when ``y0`` was a tuple.  ``status``: int64 :class:`Status` codes, one per sample
    in ``per_sample`` mode, a single one (0-d) in ``joint`` mode.  ``stats``: ``nfe``
    (batched f evaluations), ``steps``, ``accepted``, ``rejected`` (per sample in
    ``per_sample`` mode) and, for per-sample mode, ``useful_evals`` (share of per-sample f
    evaluations that advanced a running sample).  Values past a failure are NaN.
    """

    ts: Tensor
    ys: Any
    status: Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    solver: str = ""
    batch: str = "joint"

    @property
    def success(self) -> bool:
        return bool((self.status == Status.SUCCESS).all())

    def failed_samples(self) -> Tensor:
        return torch.nonzero(self.status.reshape(-1) != Status.SUCCESS).reshape(-1)

    def describe_failure(self) -> str:
        codes = self.status.reshape(-1)
        parts = []
        for code in sorted(set(int(c) for c in codes.tolist())):
            if code == Status.SUCCESS:
                continue
            n = int((codes == code).sum())
            where = "the joint solve" if self.batch == "joint" else f"{n} of {codes.numel()} samples"
            parts.append(f"{where}: {Status(code).name} — {Status(code).describe()}")
        return "; ".join(parts)
