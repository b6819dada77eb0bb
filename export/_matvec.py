"""Batch-1 float32 matrix–vector products as four row blocks, for the straight-line models
of one-row AOTInductor packages.

Inductor compiles a batch-1 ``linear`` (through its ``decompose_mm_pass``) as one reduction
per output row with a single 8-wide accumulator: a chain of dependent adds, latency-bound.
Written as four reductions over row blocks of the weight, which read the same input,
Inductor fuses them into one loop with four independent accumulators (the "unroll and jam"
of a hand-written GEMV).  Measured on the batch-1 RK4 step of the 64/256 MLP: the generated
kernel rewritten this way by hand ran 38 → 30 µs per step.  The layer input must be
realised once, not recomputed inside the fused loop: Inductor realises a multi-use
pointwise value only above ``realize_cpu_opcount_threshold`` (50) operations, and the
rational ``tanh`` has fewer, so the builds that use this table also lower that threshold
(:data:`REALIZE_OPTIONS`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["BLOCKS", "REALIZE_OPTIONS", "row_block_decompositions"]

BLOCKS = 4
REALIZE_OPTIONS = {"realize_opcount_threshold": 5}


def _rows(x: Tensor, block: Callable[[int, int], Tensor], n: int, bias: Tensor | None) -> Tensor:
    # x (1, K) as is (a view would hide its users from Inductor's realisation heuristic);
    # block(a, c): the weight rows a..c as (c - a, K).
    q = n // BLOCKS
    y = torch.cat([(block(j * q, (j + 1) * q) * x).sum(1) for j in range(BLOCKS)]).reshape(1, n)
    return y if bias is None else y + bias


def _applies(x: Tensor, n: int) -> bool:
    return x.dim() == 2 and x.shape[0] == 1 and n % BLOCKS == 0 and x.dtype == torch.float32


def _linear(x: Tensor, w: Tensor, b: Tensor | None = None) -> Any:
    if not _applies(x, w.shape[0]):
        return NotImplemented
    return _rows(x, lambda a, c: w[a:c], w.shape[0], b)


def _addmm(bias: Tensor, x: Tensor, wt: Tensor, *, beta: Any = 1, alpha: Any = 1) -> Any:
    if not _applies(x, wt.shape[1]) or beta != 1 or alpha != 1:
        return NotImplemented
    return _rows(x, lambda a, c: wt[:, a:c].t(), wt.shape[1], bias)


def _mm(x: Tensor, wt: Tensor) -> Any:
    if not _applies(x, wt.shape[1]):
        return NotImplemented
    return _rows(x, lambda a, c: wt[:, a:c].t(), wt.shape[1], None)


def row_block_decompositions() -> dict[Any, Callable[..., Any]]:
    """The decomposition table: batch-1 float32 ``linear``/``addmm``/``mm`` as row blocks;
    other shapes and dtypes decline (``NotImplemented``: the op stays)."""
    return {torch.ops.aten.linear.default: _linear, torch.ops.aten.addmm.default: _addmm,
            torch.ops.aten.mm.default: _mm}
