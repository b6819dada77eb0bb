"""Every registered sensitivity method agrees with ``autograd`` (and ``autograd`` with closed forms
and finite differences), passes ``gradcheck``, and refuses to differentiate a failed solve.

Float64 throughout.  The back-solve methods (``adjoint``) and the forward tangent solve
(``forward``) match ``autograd`` to the solve's tolerance; the replaying methods
(``checkpoint``, ``reversible``) differentiate the discretised solve itself, to rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import odeserve
from odeserve import InvalidOptionError, SolveFailedError, get_registry, solve
from odeserve._jvp import jvp

DT = torch.float64
METHODS = [name for name in get_registry().entries("sensitivity") if name != "autograd"]
# Relative gradient error allowed against autograd (issue: 1e-6 back-solve / tangent solve,
# 1e-10 replay); a third-party method is held to the looser bound.
EXACT = {"checkpoint": 1e-10, "reversible": 1e-10}
TOL = 1e-6
TIGHT = {"rtol": 1e-10, "atol": 1e-10}
SOLVERS = ["dopri5", "rk4", "reversible_heun"]


class MLP(nn.Module):
    """The article's field: an MLP on ``concat(t, z)``."""

    def __init__(self, dim: int = 2, hidden: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(DT)

    def forward(self, t, y):
        tt = t.reshape(-1, 1).expand(y.shape[0], 1)
        return self.net(torch.cat([tt, y], dim=-1))


class Split(nn.Module):
    """The same field on a tuple state ``(y[:, :1], y[:, 1:])``."""

    def __init__(self, f: nn.Module) -> None:
        super().__init__()
        self.f = f

    def forward(self, t, y):
        out = self.f(t, torch.cat(y, dim=-1))
        return out[:, :1], out[:, 1:]


class Linear(nn.Module):
    def __init__(self, A: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.A.T


def _solver_options(solver: str) -> dict:
    return dict(TIGHT) if solver == "dopri5" else {"steps": 20}


def _runs_on(method: str, solver: str) -> bool:
    """Whether the pair runs (``reversible`` needs a reversible solver)."""
    return method != "reversible" or get_registry().solver(solver).reversible


def _grads(f, y0, t, sensitivity, params, loss=None, **options):
    y0 = tuple(c.clone().requires_grad_() for c in y0) if isinstance(y0, tuple) else y0.clone().requires_grad_()
    ys = solve(f, y0, t, sensitivity=sensitivity, **options).ys
    leaves = list(y0) if isinstance(y0, tuple) else [y0]
    if loss is None:
        flat = torch.cat(ys, dim=-1) if isinstance(ys, tuple) else ys
        loss = lambda ys: (flat**2).sum() + flat[1].sin().sum()  # noqa: E731  every output counts
    grads = torch.autograd.grad(loss(ys), leaves + list(params))
    return torch.cat([g.reshape(-1) for g in grads])


def _rel(a, b):
    return float((a - b).norm() / b.norm())


T3 = torch.tensor([0.0, 0.5, 1.0], dtype=DT)


@pytest.mark.parametrize("batch", ["joint", "per_sample"])
@pytest.mark.parametrize("method, solver", [(m, s) for m in METHODS for s in SOLVERS if _runs_on(m, s)])
def test_matches_autograd(method, solver, batch):
    f = MLP()
    y0 = torch.randn(3, 2, dtype=DT)
    opts = dict(solver=solver, batch=batch, **_solver_options(solver))
    ref = _grads(f, y0, T3, "autograd", f.parameters(), **opts)
    got = _grads(f, y0, T3, method, f.parameters(), **opts)
    assert _rel(got, ref) <= EXACT.get(method, TOL)


@pytest.mark.parametrize("method", METHODS)
def test_tuple_state(method):
    solver = "reversible_heun" if method == "reversible" else "dopri5"
    f = Split(MLP(seed=1))
    y0 = torch.randn(3, 2, dtype=DT)
    state = (y0[:, :1].clone(), y0[:, 1:].clone())
    opts = dict(solver=solver, **_solver_options(solver))
    ref = _grads(f, state, T3, "autograd", f.parameters(), **opts)
    got = _grads(f, state, T3, method, f.parameters(), **opts)
    assert _rel(got, ref) <= EXACT.get(method, TOL)


@pytest.mark.parametrize("method", ["autograd"] + METHODS)
def test_linear_closed_form(method):
    """dz/dt = A z: z(T) = expm(A T) z0, differentiated in closed form (matrix_exp's own
    derivative) for L = <w, z(T)>."""
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=DT)
    z0 = torch.tensor([1.0, -0.5], dtype=DT)
    w = torch.tensor([0.7, 0.2], dtype=DT)
    t = torch.tensor([0.0, 1.5], dtype=DT)
    A_ = A.clone().requires_grad_()
    z0_ = z0.clone().requires_grad_()
    exact = torch.autograd.grad(w @ (torch.linalg.matrix_exp(A_ * 1.5) @ z0_), [z0_, A_])
    exact = torch.cat([g.reshape(-1) for g in exact])
    f = Linear(A)
    if method == "reversible":
        opts, tol = {"solver": "reversible_heun", "steps": 400}, 1e-4  # order 2: discretisation error
    else:
        opts, tol = dict(solver="dopri5", **TIGHT), 1e-8
    got = _grads(f, z0, t, method, f.parameters(), loss=lambda ys: ys[-1] @ w, **opts)
    assert _rel(got, exact) <= tol


class TanhLinear(Linear):
    def forward(self, t, y):
        return torch.tanh(y @ self.A.T)


class _SolveOf(nn.Module):
    """A whole solve as a module, so a test can feed ``f``'s parameter in as a plain input
    (the backward pass runs after ``functional_call`` has put the module's own back)."""

    def __init__(self, method: str, solver: str) -> None:
        super().__init__()
        self.f = TanhLinear(torch.zeros(2, 2, dtype=DT))
        self.method, self.solver = method, solver

    def forward(self, y0):
        return solve(self.f, y0, [0.0, 0.5, 1.0], solver=self.solver, steps=10, sensitivity=self.method).ys


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck(method):
    solver = "reversible_heun" if method == "reversible" else "rk4"
    holder = _SolveOf(method, solver)
    y0 = torch.tensor([[0.3, -0.2]], dtype=DT, requires_grad=True)
    A = torch.tensor([[0.1, -0.4], [0.5, 0.2]], dtype=DT, requires_grad=True)

    def fn(y0, A):
        return torch.func.functional_call(holder, {"f.A": A}, (y0,))

    # the adjoint's back-solve is the gradient of the ODE, not of the 10-step discretisation
    tol = {"atol": 1e-4, "rtol": 1e-3} if method == "adjoint" else {}
    assert torch.autograd.gradcheck(fn, (y0, A), fast_mode=True, **tol)


@pytest.mark.parametrize("method", ["adjoint", "checkpoint", "reversible"])
def test_closed_over_tensor_in_adjoint_params(method):
    solver = "reversible_heun" if method == "reversible" else "dopri5"
    W = torch.tensor([[0.2, -0.7], [0.9, 0.1]], dtype=DT, requires_grad=True)
    f = lambda t, y: torch.tanh(y @ W)  # noqa: E731
    y0 = torch.randn(4, 2, dtype=DT)
    opts = dict(solver=solver, **_solver_options(solver))
    ref = _grads(f, y0, T3, "autograd", [W], **opts)
    got = _grads(f, y0, T3, method, [W], sensitivity_options={"adjoint_params": [W]}, **opts)
    assert _rel(got, ref) <= EXACT.get(method, TOL)


@pytest.mark.parametrize("method", ["adjoint", "checkpoint", "reversible"])
def test_unlisted_tensor_that_requires_grad_is_refused(method):
    """A closure over a weight, not listed in adjoint_params, with y0 (or a parameter of f)
    to differentiate: the method's backward would give the weight no gradient, silently
    (it used to: W.grad stayed None).  Refused, naming the shape; an encoder's output read
    by f traces back to the encoder's weight, which is refused the same way unless the
    output itself is listed."""
    solver = "reversible_heun" if method == "reversible" else "dopri5"
    opts = dict(solver=solver, **_solver_options(solver))
    W = torch.tensor([[0.2, -0.7], [0.9, 0.1]], dtype=DT, requires_grad=True)
    y0 = torch.randn(4, 2, dtype=DT, requires_grad=True)
    with pytest.raises(InvalidOptionError, match=r"f reads 1 tensor\(s\) that require grad .*\(2, 2\).*adjoint_params"):
        solve(lambda t, y: torch.tanh(y @ W), y0, T3, sensitivity=method, **opts)
    z = torch.sin(W.sum(0))  # not a leaf: conditioning computed from a trainable tensor
    f = lambda t, y: torch.tanh(y + z)  # noqa: E731
    with pytest.raises(InvalidOptionError, match=r"\(2, 2\)"):
        solve(f, y0, T3, sensitivity=method, **opts)
    ref = _grads(f, y0.detach(), T3, "autograd", [z], **opts)
    got = _grads(f, y0.detach(), T3, method, [z], sensitivity_options={"adjoint_params": [z]}, **opts)
    assert _rel(got, ref) <= EXACT.get(method, TOL)
    # A leaf f makes for itself on every call (a CNF's divergence) is not refused.
    A = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=DT, requires_grad=True)

    def own_leaf(t, y):
        with torch.enable_grad():
            z = y.clone().requires_grad_(True)
            (dz,) = torch.autograd.grad(torch.tanh(z @ A).sum(), z, create_graph=True)
        return dz

    ref = _grads(own_leaf, y0.detach(), T3, "autograd", [A], **opts)
    got = _grads(own_leaf, y0.detach(), T3, method, [A], sensitivity_options={"adjoint_params": [A]}, **opts)
    assert _rel(got, ref) <= EXACT.get(method, TOL)
    # Nothing of f's own to differentiate and y0 data: the plain solve runs, autograd reaches W.
    ys = solve(lambda t, y: torch.tanh(y @ W), y0.detach(), T3, sensitivity=method, **opts).ys
    (gw,) = torch.autograd.grad(ys.square().sum(), [W])
    (want,) = torch.autograd.grad(solve(lambda t, y: torch.tanh(y @ W), y0.detach(), T3, **opts).ys.square().sum(), [W])
    assert _rel(gw, want) <= 1e-12


def test_adjoint_per_sample_without_parameters():
    """Only y0 to differentiate: the backward solve itself runs per sample."""
    f = lambda t, y: -y * (1 + t.reshape(-1, 1)) + torch.sin(y)  # noqa: E731
    y0 = torch.tensor([[0.5, -1.0], [2.0, 0.1], [0.0, 3.0]], dtype=DT)
    opts = dict(batch="per_sample", **TIGHT)
    ref = _grads(f, y0, T3, "autograd", [], **opts)
    got = _grads(f, y0, T3, "adjoint", [], **opts)
    assert _rel(got, ref) <= TOL


@pytest.mark.parametrize(
    "options, solver",
    [({"seminorm": True}, "dopri5"), ({"adjoint_solver": "tsit5", "adjoint_rtol": 1e-11, "adjoint_atol": 1e-11}, "dopri5"),
     ({"adjoint_solver": "dopri5"}, "rk4"), ({"adjoint_solver": "rk38"}, "rk4")],
)
def test_adjoint_options(options, solver):
    f = MLP(seed=2)
    y0 = torch.randn(3, 2, dtype=DT)
    opts = dict(solver=solver, **({"steps": 30} if solver == "rk4" else TIGHT))
    ref = _grads(f, y0, T3, "autograd", f.parameters(), **opts)
    got = _grads(f, y0, T3, "adjoint", f.parameters(), sensitivity_options=options, **opts)
    assert _rel(got, ref) <= TOL


def test_adjoint_fixed_solver_after_adaptive_forward_is_refused():
    f = MLP()
    y0 = torch.randn(3, 2, dtype=DT, requires_grad=True)
    ys = solve(f, y0, T3, sensitivity="adjoint", sensitivity_options={"adjoint_solver": "rk4"}).ys
    with pytest.raises(InvalidOptionError, match="fixed-step"):
        ys.sum().backward()


def test_jvp_vjp_consistency():
    """<u, J v> from forward mode equals <Jᵀu, v> from the adjoint, for tangents of y0 and θ."""
    f = MLP(seed=3)
    torch.manual_seed(4)
    y0 = torch.randn(3, 2, dtype=DT)
    v = torch.randn_like(y0)
    w = {n: torch.randn_like(p) for n, p in f.named_parameters()}
    ys, tangents = jvp(f, y0, T3, v, w, **TIGHT)
    u = torch.randn_like(ys)
    y0_ = y0.clone().requires_grad_()
    out = solve(f, y0_, T3, sensitivity="adjoint", **TIGHT).ys
    grads = torch.autograd.grad((u * out).sum(), [y0_] + list(f.parameters()))
    lhs = (u * tangents).sum()
    rhs = (grads[0] * v).sum() + sum((g * w[n]).sum() for g, (n, _) in zip(grads[1:], f.named_parameters()))
    assert abs(float(lhs - rhs)) <= 1e-8 * abs(float(lhs))


def test_torch_func_jvp_over_solve():
    f = MLP(seed=5)
    y0 = torch.randn(3, 2, dtype=DT)
    v = torch.randn_like(y0)
    opts = {"solver": "rk4", "steps": 10}
    _, got = torch.func.jvp(lambda y: solve(f, y, T3, sensitivity="forward", **opts).ys, (y0,), (v,))
    _, ref = torch.func.jvp(lambda y: solve(f, y, T3, sensitivity="autograd", **opts).ys, (y0,), (v,))
    # the tangent ODE integrated with the same RK steps is the derivative of those steps
    assert _rel(got.detach(), ref.detach()) <= 1e-12


def test_forward_ad_dual_tensors_are_refused():
    import torch.autograd.forward_ad as fwAD

    y0 = torch.randn(3, 2, dtype=DT)
    with fwAD.dual_level(), pytest.raises(InvalidOptionError, match="torch.func.jvp"):
        solve(MLP(), fwAD.make_dual(y0, torch.ones_like(y0)), T3, sensitivity="forward")


def test_article_example():
    """A point moving in the plane under an MLP field, solved with RK4: the tangent at z(t0)
    pushed forward to z(t1) (JVP), and a tangent at z(t1) pulled back to z(t0) and θ (VJP),
    both against central finite differences of the solve itself."""
    torch.manual_seed(6)
    f = MLP(hidden=5, seed=6)
    f.net[1] = nn.LeakyReLU(0.1)  # the article's activations: LeakyReLU then Tanh
    f.net.append(nn.Tanh())
    z0 = torch.tensor([[0.6, -0.4]], dtype=DT)
    t = torch.tensor([0.0, 2.0], dtype=DT)
    opts = {"solver": "rk4", "steps": 40}
    eps = 1e-6

    def z1(z, shift=None):
        with torch.no_grad():
            if shift is not None:
                for p, s in zip(f.parameters(), shift):
                    p.add_(s)
            out = solve(f, z, t, **opts).ys[-1]
            if shift is not None:
                for p, s in zip(f.parameters(), shift):
                    p.sub_(s)
        return out

    v = torch.tensor([[1.0, 0.5]], dtype=DT)
    _, pushed = jvp(f, z0, t, v, **opts)
    fd = (z1(z0 + eps * v) - z1(z0 - eps * v)) / (2 * eps)
    assert _rel(pushed[-1].detach(), fd) <= 1e-7

    u = torch.tensor([[0.3, -1.2]], dtype=DT)
    z0_ = z0.clone().requires_grad_()
    out = solve(f, z0_, t, sensitivity="adjoint", **opts).ys[-1]
    pulled = torch.autograd.grad((u * out).sum(), [z0_] + list(f.parameters()))
    for k in range(2):
        e = torch.zeros_like(z0)
        e[0, k] = 1.0
        fd_k = float((u * (z1(z0 + eps * e) - z1(z0 - eps * e))).sum() / (2 * eps))
        assert math.isclose(float(pulled[0][0, k]), fd_k, rel_tol=1e-6, abs_tol=1e-9)
    direction = [torch.randn_like(p) for p in f.parameters()]
    fd_theta = float((u * (z1(z0, [eps * d for d in direction]) - z1(z0, [-eps * d for d in direction]))).sum() / (2 * eps))
    got_theta = float(sum((g * d).sum() for g, d in zip(pulled[1:], direction)))
    assert math.isclose(got_theta, fd_theta, rel_tol=1e-6)


class Blowup(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(1.0, dtype=DT))

    def forward(self, t, y):
        return self.s * y * y


@pytest.mark.parametrize("method", METHODS)
def test_failed_solve_raises_instead_of_a_gradient(method):
    f = MLP()
    cases = [("reversible_heun", {"steps": 20}, torch.full((1, 2), 10.0, dtype=DT), Blowup())]
    if method != "reversible":
        cases.append(("dopri5", {"max_steps": 2, **TIGHT}, torch.randn(3, 2, dtype=DT), f))
        cases.append(("rk4", {"steps": 20}, torch.full((1, 2), 10.0, dtype=DT), Blowup()))
    for solver, options, y0, field in cases:
        y0 = y0.clone().requires_grad_()
        sol = solve(field, y0, [0.0, 5.0], solver=solver, sensitivity=method, throw=False, **options)
        assert not sol.success
        loss = torch.nan_to_num(sol.ys[-1]).sum() + torch.nan_to_num(sol.ys[0]).sum()
        with pytest.raises(SolveFailedError):
            loss.backward()
        with pytest.raises(SolveFailedError):
            solve(field, y0, [0.0, 5.0], solver=solver, sensitivity=method, **options)


def test_jvp_of_a_failed_solve_raises():
    y0 = torch.randn(3, 2, dtype=DT)
    with pytest.raises(SolveFailedError):
        jvp(MLP(), y0, T3, torch.ones_like(y0), max_steps=2, **TIGHT)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_names_the_known_ones(method):
    with pytest.raises(InvalidOptionError, match="unknown option"):
        solve(MLP(), torch.randn(3, 2, dtype=DT), T3, sensitivity=method, sensitivity_options={"bogus": 1})


def test_reversible_needs_a_reversible_solver():
    with pytest.raises(InvalidOptionError, match="reversible_heun"):
        solve(MLP(), torch.randn(3, 2, dtype=DT), T3, solver="rk4", sensitivity="reversible")


def test_jvp_checks_its_arguments():
    y0 = torch.randn(3, 2, dtype=DT)
    with pytest.raises(InvalidOptionError, match="not parameters"):
        jvp(MLP(), y0, T3, y0, {"nope": torch.zeros(1)})
    with pytest.raises(InvalidOptionError, match="nn.Module"):
        jvp(lambda t, y: -y, y0, T3, y0, {"A": torch.zeros(1)})


def test_jvp_is_public():
    assert odeserve.jvp is jvp
