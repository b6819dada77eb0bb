"""Continuous normalizing flows: the log-density ODE, the trace estimators, training through
the sensitivities, and the exported sampler/density in ONNX Runtime.

Statistical checks use fixed seeds, so they are deterministic; their bounds are the usual
Monte Carlo ones (3–4 standard errors), not tuned to the seed.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from odeserve import InvalidOptionError, ShapeMismatchError
from odeserve.cnf import CNF, CNFDynamics, draw_noise, exact_trace, hutchinson_trace, standard_normal_log_prob

DT = torch.float64
ROOT = Path(__file__).resolve().parents[1]


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int = 16, seed: int = 0, dtype: torch.dtype = DT) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, dim)).to(dtype)

    def forward(self, t, z):
        tt = t.to(z.dtype).reshape(-1, 1).expand(z.shape[0], 1)
        return self.net(torch.cat([z, tt], dim=1))


class Linear(nn.Module):
    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, z):
        return z @ self.A.T


# --------------------------------------------------------------------------- the ODE


@pytest.mark.parametrize("t1", [0.5, 2.0])
@pytest.mark.parametrize("solver", [{"solver": "rk4", "steps": 5}, {"solver": "dopri5", "rtol": 1e-6, "atol": 1e-8}])
def test_linear_field_log_density_change_is_minus_t_trace(t1, solver):
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 3, dtype=DT, generator=g)
    cnf = CNF(Linear(A), 3, t1=t1, **solver)
    x = torch.randn(4, 3, dtype=DT, generator=g)
    z, delta = cnf.flow(x)
    torch.testing.assert_close(delta, torch.full((4,), -t1 * float(torch.trace(A)), dtype=DT), rtol=1e-12, atol=1e-12)
    # and the density itself: z = exp(t1 A) x, so log p(x) = log N(exp(t1 A) x) + t1 tr(A)
    if solver["solver"] == "dopri5":
        want = standard_normal_log_prob(x @ torch.linalg.matrix_exp(t1 * A).T) + t1 * torch.trace(A)
        torch.testing.assert_close(cnf.log_prob(x), want, rtol=1e-6, atol=1e-6)


def test_exact_trace_is_the_jacobian_trace():
    f = MLP(5)
    z = torch.randn(3, 5, dtype=DT)
    t = torch.tensor(0.3, dtype=DT)
    fz, tr = exact_trace(f, t, z)
    for b in range(3):
        J = torch.autograd.functional.jacobian(lambda v: f(t, v.unsqueeze(0)).squeeze(0), z[b])
        torch.testing.assert_close(tr[b], torch.trace(J), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fz, f(t, z))


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased(noise):
    f = MLP(4, seed=2)
    t = torch.tensor(0.7, dtype=DT)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, dtype=DT, generator=g)
    n = 4000
    eps = draw_noise(torch.empty(3 * n, 4, dtype=DT), noise, generator=g)
    if noise == "rademacher":
        assert set(eps.unique().tolist()) == {-1.0, 1.0}
    _, est = hutchinson_trace(f, t, x.repeat_interleave(n, 0), eps)
    _, exact = exact_trace(f, t, x)
    est = est.reshape(3, n)
    se = est.std(dim=1) / math.sqrt(n)
    assert bool(((est.mean(dim=1) - exact).abs() <= 3 * se).all()), (est.mean(dim=1), exact, se)

    # the whole solve's Δ too (its z path does not depend on ε, so it is linear in εεᵀ)
    cnf = CNF(f, 4, trace="hutchinson", noise=noise, solver="rk4", steps=4)
    xs = x[:1].expand(2000, 4)
    with torch.no_grad():
        lp = cnf.log_prob(xs)
        ref = cnf.log_prob(x[:1], trace="exact")
    assert abs(float(lp.mean() - ref)) <= 3 * float(lp.std()) / math.sqrt(2000)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("sensitivity, tol", [("adjoint", 1e-6), ("checkpoint", 1e-10)])
def test_sensitivities_agree_with_autograd(trace, sensitivity, tol):
    f = MLP(2, seed=4)
    cnf = CNF(f, 2, trace=trace, solver="rk4", steps=8)
    x = torch.randn(16, 2, dtype=DT)
    noise = draw_noise(x)

    def grads(sens):
        f.zero_grad()
        cnf.log_prob(x, noise=noise, sensitivity=sens).mean().backward()
        return torch.cat([p.grad.reshape(-1) for p in f.parameters()])

    ref, got = grads("autograd"), grads(sensitivity)
    assert float((got - ref).norm() / ref.norm()) <= tol


def test_noise_is_fixed_per_solve_through_the_adjoint():
    """The adjoint's backward solve runs after later solves have drawn fresh probes: it must
    still use its own solve's probe."""
    f = MLP(2, seed=5)
    cnf = CNF(f, 2, trace="hutchinson", solver="rk4", steps=8, sensitivity="adjoint")
    x = torch.randn(8, 2, dtype=DT)
    probe = draw_noise(x)
    first = cnf.log_prob(x, noise=probe)
    second = cnf.log_prob(x)  # a fresh probe, before the first backward pass
    w = f.net[0].weight
    (g_first,) = torch.autograd.grad(first.sum(), w)
    (g_second,) = torch.autograd.grad(second.sum(), w)
    (g_ref,) = torch.autograd.grad(cnf.log_prob(x, noise=probe, sensitivity="autograd").sum(), w)
    assert float((g_first - g_ref).norm() / g_ref.norm()) <= 1e-6
    assert float((g_second - g_ref).norm() / g_ref.norm()) > 1e-3  # another probe: another estimate


def test_sample_density_matches_log_prob():
    cnf = CNF(MLP(2, seed=6), 2, rtol=1e-8, atol=1e-8)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        x, lp = cnf.sample(6, generator=g, with_log_prob=True)
        torch.testing.assert_close(cnf.log_prob(x), lp, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(cnf.sample(z=torch.randn(6, 2, dtype=DT, generator=torch.Generator().manual_seed(7))), x,
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_per_sample_batch_matches_joint(trace):
    cnf = CNF(MLP(2, seed=9), 2, trace=trace, rtol=1e-9, atol=1e-9)
    x = torch.randn(5, 2, dtype=DT)
    noise = draw_noise(x)
    with torch.no_grad():
        joint = cnf.log_prob(x, noise=noise)
        per_sample = cnf.log_prob(x, noise=noise, batch="per_sample")
    torch.testing.assert_close(per_sample, joint, rtol=1e-7, atol=1e-7)


def test_bad_configuration_raises():
    f = MLP(2)
    with pytest.raises(InvalidOptionError, match="trace"):
        CNF(f, 2, trace="stochastic")
    with pytest.raises(InvalidOptionError, match="noise"):
        CNF(f, 2, noise="uniform")
    with pytest.raises(InvalidOptionError, match="noise"):
        CNFDynamics(f, "hutchinson")
    with pytest.raises(ShapeMismatchError, match="dim 2"):
        CNF(f, 2).log_prob(torch.zeros(3, 4, dtype=DT))
    with pytest.raises(ShapeMismatchError, match="noise"):
        CNF(f, 2, trace="hutchinson").log_prob(torch.zeros(3, 2, dtype=DT), noise=torch.zeros(2, 2, dtype=DT))
    with pytest.raises(InvalidOptionError, match="compact"):
        CNF(f, 2, trace="hutchinson").log_prob(torch.zeros(3, 2, dtype=DT), batch="per_sample", compact=True)


# --------------------------------------------------------------------------- training + export

MEAN = torch.tensor([1.5, -1.0])
SCALE = torch.tensor([[0.6, 0.0], [0.5, 0.4]])  # x = MEAN + SCALE @ n: correlated, far from N(0, I)


def gaussian_data(n: int, g: torch.Generator) -> torch.Tensor:
    return MEAN + torch.randn(n, 2, generator=g) @ SCALE.T


@pytest.fixture(scope="module")
def trained():
    """A CNF trained briefly on a 2-D Gaussian, Hutchinson's trace through the adjoint."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    cnf = CNF(MLP(2, hidden=32, seed=8, dtype=torch.float32), 2, trace="hutchinson", noise="rademacher",
              solver="rk4", steps=4, sensitivity="adjoint")
    opt = torch.optim.Adam(cnf.parameters(), lr=2e-2)
    for _ in range(60):
        loss = -cnf.log_prob(gaussian_data(128, g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return cnf


def test_training_beats_the_base_density(trained):
    held_out = gaussian_data(2000, torch.Generator().manual_seed(99))
    with torch.no_grad():
        model = trained.log_prob(held_out, trace="exact").mean()
    base = standard_normal_log_prob(held_out).mean()
    best = -0.5 * math.log(float(torch.det(2 * math.pi * math.e * SCALE @ SCALE.T)))  # the data's own entropy
    assert float(model) > float(base) + 1.0, (float(model), float(base), best)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from odeserve.cnf import OnnxCNF

    path = tmp_path_factory.mktemp("cnf") / "cnf.onnx"
    export = trained.to_onnx(path, steps=16, parity_batches=(5,))
    return export, OnnxCNF(path)


def test_exported_sampler_and_density_match_pytorch(trained, exported):
    export, model = exported
    assert export.parity and max(export.parity.values()) < 1e-4
    z = torch.randn(300, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x, lp = trained.sample(z=z, with_log_prob=True, steps=16)
        density = trained.log_prob(x, trace="exact", steps=16)
    x_onnx, lp_onnx = model.sample(z.numpy())
    np.testing.assert_allclose(x_onnx, x.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(lp_onnx, lp.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(model.log_prob(x.numpy()), density.numpy(), atol=1e-4, rtol=1e-4)


def test_exported_samples_have_pytorchs_moments(trained, exported):
    _, model = exported
    n = 4000
    with torch.no_grad():
        x_torch = trained.sample(n, generator=torch.Generator().manual_seed(2)).double().numpy()
    x_onnx, _ = model.sample(np.random.default_rng(3).standard_normal((n, 2)))
    x_onnx = x_onnx.astype(np.float64)

    def moments(x):
        c = x - x.mean(0)
        feats = np.concatenate([x, c[:, [0]] ** 2, c[:, [1]] ** 2, c[:, [0]] * c[:, [1]]], axis=1)
        return feats.mean(0), feats.std(0) / math.sqrt(len(x))

    (m_t, se_t), (m_o, se_o) = moments(x_torch), moments(x_onnx)
    assert np.all(np.abs(m_t - m_o) <= 4 * np.sqrt(se_t**2 + se_o**2)), (m_t, m_o)


def test_example_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("cnf_2d", ROOT / "examples" / "cnf_2d.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result = mod.main(["--quick", "--iters", "5", "--out", str(tmp_path)])
    assert result["png"].is_file() and result["png"].stat().st_size > 0
    assert math.isfinite(result["nll"]) and result["samples"].shape == (2000, 2)
