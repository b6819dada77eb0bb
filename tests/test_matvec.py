"""The batch-1 row-block decomposition of ``linear`` (odeserve.export._matvec) that the
straight-line models of one-row AOTInductor packages are compiled with: the same products
as ``F.linear``, and only where it applies (one float32 row, outputs divisible by 4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from odeserve.export._matvec import row_block_decompositions


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(dim, hidden), nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x))) + x[:, :1] @ self.l1.weight[:1, :1]  # an mm too


def _ops(program: torch.export.ExportedProgram) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("dim,hidden,out", [(65, 256, 64), (3, 64, 8), (7, 12, 4)])
def test_row_blocks_equal_linear_at_batch_one(dim, hidden, out):
    torch.manual_seed(0)
    m = _MLP(dim, hidden, out).eval()
    x = torch.randn(1, dim)
    with torch.no_grad():
        program = torch.export.export(m, (x,)).run_decompositions(row_block_decompositions())
        want, got = m(x), program.module()(x)
    assert not any("addmm" in op or "linear" in op for op in _ops(program))  # all rewritten
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()


@pytest.mark.parametrize("rows,out,dtype", [(2, 8, torch.float32), (1, 6, torch.float32), (1, 8, torch.float64)])
def test_row_blocks_decline_other_shapes_and_dtypes(rows, out, dtype):
    m = nn.Linear(5, out).to(dtype).eval()
    x = torch.randn(rows, 5, dtype=dtype)
    with torch.no_grad():
        program = torch.export.export(m, (x,)).run_decompositions(row_block_decompositions())
        assert torch.allclose(program.module()(x), m(x))
    assert any("addmm" in op or "linear" in op or ".mm." in op for op in _ops(program))
