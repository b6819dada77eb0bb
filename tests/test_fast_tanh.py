"""The float32 rational ``tanh`` of the Inductor builds (``odeserve.export._tanh``).

Accuracy against float64 ``tanh`` on a dense grid, the special values, that float64 keeps
``torch.tanh``, and that the compiled inference graph really uses it (the generated C++ has
no ``tanh`` call with ``fast_tanh`` and has one without) while agreeing with the eager solve.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from odeserve import solve
from odeserve.export import compile_solve
from odeserve.export._tanh import fast_tanh_decompositions, rational_tanh

try:
    from .problems import TimeConcatMLP
except ImportError:
    from problems import TimeConcatMLP

EPS32 = torch.finfo(torch.float32).eps


def test_relative_error_within_three_float32_eps() -> None:
    x = torch.cat([
        torch.linspace(-12.0, 12.0, 2_000_001),
        torch.logspace(-38, 1, 20_000),
        -torch.logspace(-38, 1, 20_000),
    ])
    got = rational_tanh(x)
    want = torch.tanh(x.double())
    rel = ((got.double() - want).abs() / want.abs().clamp_min(1e-300))[x != 0]
    assert float(rel.max()) <= 3.5 * EPS32, float(rel.max()) / EPS32
    assert float(got.abs().max()) <= 1.0
    assert torch.equal(rational_tanh(-x), -got)  # odd, exactly
    assert float(rational_tanh(torch.zeros(1))[0]) == 0.0


def test_special_values() -> None:
    got = rational_tanh(torch.tensor([float("inf"), -float("inf"), float("nan"), 1e30, -1e30]))
    assert got[:2].tolist() == [1.0, -1.0] and bool(torch.isnan(got[2])) and got[3:].tolist() == [1.0, -1.0]


def test_other_dtypes_keep_torch_tanh() -> None:
    assert rational_tanh(torch.ones(2, dtype=torch.float64)) is NotImplemented

    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(x) * 2

    def tanh_nodes(dtype: torch.dtype) -> int:
        ep = torch.export.export(M(), (torch.ones(3, dtype=dtype),)).run_decompositions(fast_tanh_decompositions())
        return sum(node.target is torch.ops.aten.tanh.default for node in ep.graph.nodes)

    assert tanh_nodes(torch.float64) == 1
    assert tanh_nodes(torch.float32) == 0


_TANH_CALL = re.compile(r"\.tanh\(\)|std::tanh\(|\btanhf?\(|Sleef_tanh")


@pytest.mark.parametrize("fast", [True, False])
def test_compiled_inference_graph_uses_it(fast: bool) -> None:
    from torch._inductor.utils import run_and_get_code

    f = TimeConcatMLP(hidden=16).eval().requires_grad_(False)
    y0 = torch.randn(1, 2, generator=torch.Generator().manual_seed(1))
    model = compile_solve(f, solver="rk4", t0=0.0, t1=1.0, steps=4, fast_tanh=fast)
    torch._dynamo.reset()
    with torch.no_grad():
        out, code = run_and_get_code(model, y0)
    calls = [c for c in code if _TANH_CALL.search(c)]
    assert bool(calls) is not fast, "tanh calls in the generated code" if fast else "no tanh call left"
    want = solve(f, y0, [0.0, 1.0], solver="rk4", steps=4).ys[-1]
    assert float((out[-1] - want).abs().max()) <= 1e-6  # ys at t0 and t1


@pytest.mark.slow
def test_compiled_adaptive_float32_default_agrees_with_eager() -> None:
    """The default compiled path (rational tanh) against the eager solve (torch.tanh): equal
    within the solve's own tolerance; the steps may differ where a decision is marginal."""
    f = TimeConcatMLP(hidden=16).eval().requires_grad_(False)
    y0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    model = compile_solve(f, solver="dopri5", t0=0.0, t1=1.0, rtol=1e-5, atol=1e-7, return_info=True)
    with torch.no_grad():
        ys, info = model(y0)
        ref = solve(f, y0, [0.0, 1.0], solver="dopri5", rtol=1e-5, atol=1e-7)
    assert float((ys[-1] - ref.ys[-1]).abs().max()) <= 10 * (1e-7 + 1e-5 * float(ref.ys[-1].abs().max()))
    assert torch.equal(info.status, ref.status)
    assert abs(int(info.accepted) - int(ref.stats["accepted"])) <= 1
