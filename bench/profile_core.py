"""Where odeserve's eager loop spends its non-f time (companion to bench_core.py).

python bench/profile_core.py [--size 64/256] [--batch 1] [--method dopri5] [--repeats 30]

1. Phase breakdown of one ``odeserve.solve``: prepare() (input checks, plugin set-up,
   check_f), adaptive_init (f0 + initial step), the steps, build_solution; each phase's
   CPU time minus the time spent inside f, so what is left is odeserve's own cost.
   (Measured by wrapping those functions in this process only; the library is not changed.)
2. aten op counts per phase (TorchDispatchMode): how many tensor ops each phase dispatches,
   which are the most frequent inside one adaptive_step / one fixed step.
3. cProfile of repeated solves: Python functions by own time.
4. Micro-benchmarks of one ExplicitRK.step with a no-op f against two fused variants
   (prototypes here, not library code), and of adaptive_step's bookkeeping.

Prints a report and writes bench/results/profile_core.json.
"""

from __future__ import annotations

import argparse
import cProfile
import collections
import io
import math
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MLP_SIZES, make_mlp, mlp_y0, time_alternating, write_json  # noqa: E402

import odeserve  # noqa: E402
import odeserve._api as api  # noqa: E402
import odeserve._loop as loop  # noqa: E402


class OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.phase = "other"
        self.by_phase: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = str(func.overloadpacket.__name__)
        self.by_phase[self.phase][name] += 1
        return func(*args, **(kwargs or {}))


class Phases:
    """Wraps odeserve functions to attribute CPU time (and ops) to phases; f time is
    subtracted through the wrapped f."""

    def __init__(self, f: Callable, counter: OpCounter | None = None) -> None:
        self.f = f
        self.counter = counter
        self.t_f = 0.0
        self.n_f = 0
        self.stack: list[str] = []
        self.totals: dict[str, float] = collections.defaultdict(float)
        self.f_in: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self._orig: list[tuple[Any, str, Any]] = []

    def wrapped_f(self, t, y):  # type: ignore[no-untyped-def]
        phase = self.stack[-1] if self.stack else "other"
        prev = self.counter.phase if self.counter else None
        if self.counter:
            self.counter.phase = "f"
        c = time.thread_time()
        out = self.f(t, y)
        dt = time.thread_time() - c
        if self.counter:
            self.counter.phase = prev
        self.t_f += dt
        self.n_f += 1
        self.f_in[phase] += dt
        return out

    def _wrap(self, mod: Any, name: str, phase: str) -> None:
        orig = getattr(mod, name)
        self._orig.append((mod, name, orig))

        def w(*a, **k):  # type: ignore[no-untyped-def]
            self.stack.append(phase)
            prev = self.counter.phase if self.counter else None
            if self.counter:
                self.counter.phase = phase
            c = time.thread_time()
            try:
                return orig(*a, **k)
            finally:
                self.totals[phase] += time.thread_time() - c
                self.calls[phase] += 1
                self.stack.pop()
                if self.counter:
                    self.counter.phase = prev

        setattr(mod, name, w)

    def __enter__(self) -> "Phases":
        self._wrap(api, "prepare", "prepare")
        self._wrap(loop, "adaptive_init", "adaptive_init")
        self._wrap(loop, "adaptive_step", "adaptive_step")
        self._wrap(api, "fixed_eager", "fixed_eager")
        self._wrap(api, "build_solution", "build_solution")
        return self

    def __exit__(self, *exc: Any) -> None:
        for mod, name, orig in reversed(self._orig):
            setattr(mod, name, orig)


def solve_kwargs(method: str) -> dict[str, Any]:
    return dict(solver="dopri5", rtol=1e-5, atol=1e-7) if method == "dopri5" else dict(solver="rk4", steps=100)


def phase_breakdown(f, y0, t, method: str, repeats: int) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    kw = solve_kwargs(method)
    for _ in range(3):
        odeserve.solve(f, y0, t, **kw)
    runs = []
    for _ in range(repeats):
        ph = Phases(f)
        with ph:
            c = time.thread_time()
            sol = odeserve.solve(ph.wrapped_f, y0, t, **kw)
            total = time.thread_time() - c
        runs.append((total, ph, sol))
    # median run by total
    runs.sort(key=lambda r: r[0])
    total, ph, sol = runs[len(runs) // 2]
    steps = int(sol.stats["steps"])
    phases = {}
    for name in ("prepare", "adaptive_init", "adaptive_step", "fixed_eager", "build_solution"):
        if ph.calls.get(name):
            phases[name] = {"calls": ph.calls[name], "cpu_ms": ph.totals[name] * 1e3,
                            "f_ms": ph.f_in[name] * 1e3, "own_ms": (ph.totals[name] - ph.f_in[name]) * 1e3}
    accounted = sum(p["cpu_ms"] for p in phases.values())
    return {"total_ms": total * 1e3, "f_total_ms": ph.t_f * 1e3, "f_calls": ph.n_f, "nfe": int(sol.stats["nfe"]),
            "steps": steps, "phases": phases, "rest_ms": total * 1e3 - accounted,
            "own_total_ms": (total - ph.t_f) * 1e3}


def op_counts(f, y0, t, method: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    kw = solve_kwargs(method)
    counter = OpCounter()
    ph = Phases(f, counter)
    with ph, counter:
        sol = odeserve.solve(ph.wrapped_f, y0, t, **kw)
    steps = int(sol.stats["steps"])
    out: dict[str, Any] = {"steps": steps, "phases": {}}
    for phase, cnt in counter.by_phase.items():
        out["phases"][phase] = {"ops": sum(cnt.values()), "top": cnt.most_common(40)}
    return out


def cprofile_top(f, y0, t, method: str, n: int = 20, limit: int = 30) -> str:  # type: ignore[no-untyped-def]
    kw = solve_kwargs(method)
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        odeserve.solve(f, y0, t, **kw)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(limit)
    return s.getvalue()


# --------------------------------------------------------------------------- micro
# Prototypes of fused variants, written here from the tableau (not the library's internals),
# to size what the suggestions in the report would save.  Joint mode, no interior outputs.


def _dense_tableau(tab: Any, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    S = len(tab.c)
    A = torch.zeros(S, S, dtype=dtype)
    for i, row in enumerate(tab.a):
        for j, v in enumerate(row):
            A[i, j] = float(v)
    return A, torch.tensor([float(x) for x in tab.c], dtype=dtype), torch.tensor([float(x) for x in tab.b_error], dtype=dtype)


def make_proto_buffer_step(tab: Any, dtype: torch.dtype) -> Callable:
    """Stages in one preallocated (S, n) buffer; stage i is ONE addmm: y + (dt·A)[i, :i] @ K[:i];
    dt·A and all stage times computed once per step; error = (dt·e) @ K (one mv)."""
    A, c, e = _dense_tableau(tab, dtype)
    S = A.shape[0]

    def step(rhs, t, y, dt, f0):  # type: ignore[no-untyped-def]
        n = y.numel()
        K = y.new_empty((S, n))
        K[0] = f0.reshape(-1)
        dtA = dt * A
        tn = torch.addcmul(t, c, dt).unbind(0)
        yf = y.reshape(1, n)
        ys = y
        for i in range(1, S):
            ys = torch.addmm(yf, dtA[i : i + 1, :i], K[:i]).reshape(y.shape)
            K[i] = rhs(tn[i], ys).reshape(-1)
        err = torch.mv(K.t(), dt * e).reshape(y.shape)
        return ys, K[-1].reshape(y.shape), err

    return step


def make_proto_fma_step(tab: Any, dtype: torch.dtype) -> Callable:
    """The library's FMA chains, but with dt folded into every non-zero coefficient by ONE
    multiply per step (then unbind), so stage i is i addcmuls starting from y (no separate
    mul and no final addcmul(y, Σ, dt)), and the stage times are one addcmul + unbind."""
    A, c, e = _dense_tableau(tab, dtype)
    S = A.shape[0]
    terms = [[(j, float(A[i, j])) for j in range(i) if float(A[i, j]) != 0.0] for i in range(S)]
    eterms = [(j, float(e[j])) for j in range(S) if float(e[j]) != 0.0]
    flat = [v for row in terms for _, v in row] + [v for _, v in eterms]
    coef = torch.tensor(flat, dtype=dtype)

    def step(rhs, t, y, dt, f0):  # type: ignore[no-untyped-def]
        sc = (dt * coef).unbind(0)
        tn = torch.addcmul(t, c, dt).unbind(0)
        ks = [f0]
        pos = 0
        ys = y
        for i in range(1, S):
            ys = y
            for j, _ in terms[i]:
                ys = torch.addcmul(ys, ks[j], sc[pos])
                pos += 1
            ks.append(rhs(tn[i], ys))
        (j0, _), rest = eterms[0], eterms[1:]
        err = ks[j0] * sc[pos]
        pos += 1
        for j, _ in rest:
            err = torch.addcmul(err, ks[j], sc[pos])
            pos += 1
        return ys, ks[-1], err

    return step


def micro_step(dim: int, batch: int, repeats: int) -> dict[str, Any]:
    """One dopri5 step with a free f (returns a constant): the stepper's own cost, the
    library's ExplicitRK.step vs the two prototypes above."""
    from odeserve.registry import get_registry

    dtype = torch.float32
    s = get_registry().solver("dopri5")(dtype, torch.device("cpu"))
    y, k0, kconst = torch.randn(1, batch * dim), torch.randn(1, batch * dim), torch.randn(1, batch * dim)
    t, dt = torch.tensor(0.3), torch.tensor(0.01)
    rhs = lambda tt, yy: kconst  # noqa: E731
    pa, pb = make_proto_buffer_step(s.tableau, dtype), make_proto_fma_step(s.tableau, dtype)
    fns = {"library": lambda: s.step(rhs, t, y, dt, k0), "proto_buffer_addmm": lambda: pa(rhs, t, y, dt, k0),
           "proto_fma_dt_folded": lambda: pb(rhs, t, y, dt, k0)}
    ref = s.step(rhs, t, y, dt, k0)
    diffs = {}
    for name in ("proto_buffer_addmm", "proto_fma_dt_folded"):
        yy, _, ee = fns[name]()
        diffs[name] = (float((yy - ref.y).abs().max()), float((ee - ref.err[0]).abs().max()))
    ops = {k: _count_ops(v) for k, v in fns.items()}
    tm = time_alternating(fns, repeats=repeats, inner={k: 100 for k in fns})
    return {"dim": dim, "batch": batch, "max_diff_y_err": diffs,
            **{k: {"us": tm[k]["median_s"] * 1e6, "ops": ops[k]} for k in fns}}


def proto_joint_loop(P: Any, y0: torch.Tensor, f0: torch.Tensor | None, step: Callable | None = None) -> tuple[torch.Tensor, int]:
    """Eager joint-mode loop that makes its one host read per step the error ratio (instead
    of ``running.any()``) and does accept/reject, the PI controller, the last-step clamp and
    the status in Python floats.  t and dt stay 0-d tensors of the state's dtype."""
    st, _ = loop.adaptive_init(P, y0, f0)
    ctrl = P.controller
    safety, fmin, fmax = float(ctrl.safety), float(ctrl.factor_min), float(ctrl.factor_max)
    alpha, beta = float(ctrl.alpha), float(getattr(ctrl, "beta", 0.0))
    y, fy, t, dt = st.y, st.f0, st.t, st.dt
    t1, t1f = P.t1, float(P.t1)
    tf, dtf, mem = float(t), float(dt), 1.0
    solver = P.solver
    steps = 0
    while True:
        last = dtf >= t1f - tf
        h = t1 - t if last else dt
        if step is None:
            res = solver.step(P.rhs, t, y, h, fy)
            y_new, f_new, err = res.y, res.f, res.err[0]
        else:
            y_new, f_new, err = step(P.rhs, t, y, h, fy)
        scale = torch.addcmul(P.atol, P.rtol, torch.maximum(y.abs(), y_new.abs()))
        r = float(torch.linalg.vector_norm(err / scale) * (1.0 / math.sqrt(err.numel())))
        steps += 1
        ok = r <= 1.0
        fac = safety * r**alpha * mem**beta if r > 0 else fmax
        fac = min(fmax, max(fmin, fac)) if math.isfinite(fac) else fmin
        if ok:
            y, fy = y_new, f_new
            t = t1 if last else t + h
            tf = t1f if last else float(t)  # (a second read; a float mirror would avoid it)
            mem = max(r, 1e-4)
            if last:
                return y, steps
        else:
            fac = min(fac, 1.0)
        dt = h * fac
        dtf = float(dt)
        if steps >= P.max_steps or not math.isfinite(r):
            raise RuntimeError("prototype: no failure handling")


def micro_joint_loop(f: Callable, y0: torch.Tensor, repeats: int) -> dict[str, Any]:
    """End to end (adaptive_eager vs the prototypes) on the real f, same prepared problem."""
    from odeserve.registry import get_registry

    t = torch.tensor([0.0, 1.0])
    prep = api.prepare(f, y0, t, solver="dopri5", rtol=1e-5, atol=1e-7)
    P = prep.problem
    yf, f0 = prep.y0_flat, prep.f0_flat
    s = get_registry().solver("dopri5")(torch.float32, torch.device("cpu"))
    fma = make_proto_fma_step(s.tableau, torch.float32)
    P_raw = api.Problem(**{**P.__dict__, "rhs": f})
    nfe = int(loop.adaptive_eager(P, yf, f0=f0).batched_calls)
    t0 = torch.zeros(())

    def bare() -> None:
        for _ in range(nfe):
            f(t0, y0)
    fns = {
        "library adaptive_eager": lambda: loop.adaptive_eager(P, yf, f0=f0),
        **({"library adaptive_eager, no rhs wrapper": lambda: loop.adaptive_eager(P_raw, yf, f0=f0)}
           if y0.shape[0] == 1 else {}),
        "proto float control": lambda: proto_joint_loop(P, yf, f0),
        "proto float control + fma dt-folded": lambda: proto_joint_loop(P, yf, f0, fma),
        f"{nfe} bare f calls (NFE after f0)": bare,
    }
    lib = loop.adaptive_eager(P, yf, f0=f0)
    outs = {k: fns[k]() for k in fns if k.startswith("proto")}
    agree = {k: (float((o[0] - lib.y1).abs().max()), o[1], int(lib.accepted + lib.rejected)) for k, o in outs.items()}
    ops = {k: _count_ops(v) for k, v in fns.items()}
    tm = time_alternating(fns, repeats=repeats, warmup=2)
    return {"agree_maxdiff_steps_vs_library_steps": agree,
            **{k: {"us": tm[k]["median_s"] * 1e6, "ops": ops[k]} for k in fns}}


def make_proto_rk4_fixed(dtype: torch.dtype) -> Callable:
    """Classic RK4 over a uniform grid with everything that depends only on dt precomputed
    once per solve (dt/2, dt, dt/6, dt/3 and every stage time): 7 tensor ops per step."""

    def run(rhs, t0: float, t1: float, steps: int, y: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
        h = (t1 - t0) / steps
        w = torch.tensor([h / 2, h, h / 6, h / 3], dtype=dtype).unbind(0)
        grid = torch.linspace(t0, t1, steps + 1, dtype=torch.float64)
        nodes = torch.stack([grid[:-1], grid[:-1] + h / 2, grid[1:]], 1).to(dtype).unbind(0)
        for i in range(steps):
            tn, tm, te = nodes[i].unbind(0)
            k1 = rhs(tn, y)
            k2 = rhs(tm, torch.addcmul(y, k1, w[0]))
            k3 = rhs(tm, torch.addcmul(y, k2, w[0]))
            k4 = rhs(te, torch.addcmul(y, k3, w[1]))
            y = torch.addcmul(torch.addcmul(torch.addcmul(torch.addcmul(y, k1, w[2]), k2, w[3]), k3, w[3]), k4, w[2])
        return y

    return run


def micro_rk4(f: Callable, y0: torch.Tensor, repeats: int) -> dict[str, Any]:
    """100 RK4 steps, free f and real f: library fixed_eager vs the precomputed prototype."""
    t = torch.tensor([0.0, 1.0])
    prep = api.prepare(f, y0, t, solver="rk4", steps=100)
    P, grid, yf = prep.problem, prep.grid, prep.spec.flatten(y0)
    proto = make_proto_rk4_fixed(torch.float32)
    kconst = yf.clone()
    free = lambda tt, yy: kconst  # noqa: E731
    P_free = api.Problem(**{**P.__dict__, "rhs": free})
    P_raw = api.Problem(**{**P.__dict__, "rhs": f})  # joint, (1, D) state: flat layout == user layout
    t0 = torch.zeros(())

    def bare400() -> None:
        for _ in range(400):
            f(t0, y0)

    fns = {
        "library fixed_eager, free f": lambda: loop.fixed_eager(P_free, grid, yf),
        "proto, free f": lambda: proto(free, 0.0, 1.0, 100, yf),
        "library fixed_eager, real f": lambda: loop.fixed_eager(P, grid, yf),
        "library fixed_eager, real f, no rhs wrapper": lambda: loop.fixed_eager(P_raw, grid, yf),
        "proto, real f (rhs wrapper kept)": lambda: proto(P.rhs, 0.0, 1.0, 100, yf),
        "proto, real f, no rhs wrapper": lambda: proto(f, 0.0, 1.0, 100, yf),
        "400 bare f calls": bare400,
    }
    diff = float((loop.fixed_eager(P, grid, yf)[1] - proto(P.rhs, 0.0, 1.0, 100, yf)).abs().max())
    ops = {k: _count_ops(v) for k, v in fns.items()}
    tm = time_alternating(fns, repeats=repeats)
    return {"max_diff": diff, **{k: {"us": tm[k]["median_s"] * 1e6, "ops": ops[k]} for k in fns}}


def micro_setup(dim: int, batch: int, repeats: int) -> dict[str, Any]:
    """Pieces of prepare(): solver construction, StateSpec, _times, check_f, whole prepare."""
    from odeserve._state import StateSpec
    from odeserve.registry import get_registry

    f = make_mlp(dim, 64 if dim == 2 else 256)
    y0 = mlp_y0(batch, dim)
    t = torch.tensor([0.0, 1.0])
    reg = get_registry()
    Dopri5 = reg.solver("dopri5")
    fns = {
        "solve() whole, dopri5": lambda: odeserve.solve(f, y0, t, solver="dopri5", rtol=1e-5, atol=1e-7),
        "prepare(check_f=True)": lambda: api.prepare(f, y0, t, solver="dopri5", rtol=1e-5, atol=1e-7),
        "prepare(check_f=False)": lambda: api.prepare(f, y0, t, solver="dopri5", rtol=1e-5, atol=1e-7, check_f=False),
        "Dopri5(dtype, device)": lambda: Dopri5(torch.float32, torch.device("cpu")),
        "StateSpec(y0)": lambda: StateSpec(y0, False),
        "_times(t)": lambda: api._times(t, torch.float32, torch.device("cpu")),
        "f(t0, y0)": lambda: f(t[0], y0),
    }
    tm = time_alternating(fns, repeats=repeats, inner={k: (3 if k.startswith("solve") else 20) for k in fns})
    ops = {k: _count_ops(v) for k, v in fns.items()}
    return {k: {"us": tm[k]["median_s"] * 1e6, "ops": ops[k]} for k in fns}


def _count_ops(fn: Callable[[], Any]) -> int:
    c = OpCounter()
    with c:
        fn()
    return sum(sum(v.values()) for v in c.by_phase.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="64/256")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--micro-only", action="store_true", help="skip the phase/op/cProfile part")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    dim, hidden = MLP_SIZES[args.size]
    f = make_mlp(dim, hidden)
    t = torch.tensor([0.0, 1.0])
    report: dict[str, Any] = {"size": args.size}
    for batch in ([] if args.micro_only else sorted({args.batch, 512})):
        y0 = mlp_y0(batch, dim)
        for method in ("dopri5", "rk4"):
            key = f"b{batch}_{method}"
            pb = phase_breakdown(f, y0, t, method, args.repeats if batch == 1 else max(5, args.repeats // 3))
            oc = op_counts(f, y0, t, method)
            report[key] = {"phases": pb, "ops": oc}
            print(f"\n== {args.size} batch {batch} {method}: total {pb['total_ms']:.2f} ms, in f {pb['f_total_ms']:.2f} ms "
                  f"({pb['f_calls']} calls; nfe {pb['nfe']}), odeserve's own {pb['own_total_ms']:.2f} ms, steps {pb['steps']}")
            for name, p in pb["phases"].items():
                ops = oc["phases"].get(name, {}).get("ops", 0)
                print(f"   {name:15s} calls {p['calls']:4d}  cpu {p['cpu_ms']:8.3f} ms  in f {p['f_ms']:8.3f}  own {p['own_ms']:8.3f} ms"
                      f"  ops {ops} ({ops / max(1, p['calls']):.0f}/call)")
            print(f"   {'rest (solve())':15s} cpu {pb['rest_ms']:.3f} ms  ops {oc['phases'].get('other', {}).get('ops', 0)}")
            print(f"   f: {oc['phases'].get('f', {}).get('ops', 0)} ops total")
            for name in ("adaptive_step", "fixed_eager", "prepare", "adaptive_init", "build_solution", "other"):
                if name in oc["phases"]:
                    top = oc["phases"][name]["top"][:25]
                    print(f"   top ops in {name}: " + ", ".join(f"{k}×{v}" for k, v in top))
    y1 = mlp_y0(1, dim)
    if not args.micro_only:
        profiles(report, f, y1, t)
    micro(report, f, dim)
    write_json("profile_core.json", report)


def profiles(report: dict[str, Any], f: Callable, y1: torch.Tensor, t: torch.Tensor) -> None:
    print("\n== cProfile, 20 solves, dopri5, batch 1 (own time)")
    prof = cprofile_top(f, y1, t, "dopri5")
    print("\n".join(prof.splitlines()[:45]))
    report["cprofile_dopri5_b1"] = prof
    print("\n== cProfile, 5 solves, rk4, batch 1 (own time)")
    prof = cprofile_top(f, y1, t, "rk4", n=5, limit=20)
    print("\n".join(prof.splitlines()[:35]))
    report["cprofile_rk4_b1"] = prof


def micro(report: dict[str, Any], f: Callable, dim: int) -> None:
    print("\n== micro: one dopri5 step with a free f (stepper's own cost), joint layout")
    report["micro_step"] = []
    for d, b in ((dim, 1), (dim, 512)):
        m = micro_step(d, b, 15)
        report["micro_step"].append(m)
        print(f"   dim {d} batch {b}: " + "; ".join(f"{k} {v['us']:.1f} µs / {v['ops']} ops" for k, v in m.items()
                                                    if isinstance(v, dict) and "us" in v) + f"; max diff (y, err) {m['max_diff_y_err']}")
    for b in (1, 512):
        print(f"\n== micro: whole adaptive loop (after prepare), dopri5 joint, real f, batch {b}")
        jl = micro_joint_loop(f, mlp_y0(b, dim), 21 if b == 1 else 7)
        report[f"micro_joint_loop_b{b}"] = jl
        for k, v in jl.items():
            print(f"   {k}: {v}" if not (isinstance(v, dict) and "us" in v) else f"   {k:38s} {v['us'] / 1e3:8.2f} ms  {v['ops']:5d} ops")
    print("\n== micro: RK4, 100 steps, batch 1")
    rk = micro_rk4(f, mlp_y0(1, dim), 15)
    report["micro_rk4_b1"] = rk
    for k, v in rk.items():
        print(f"   {k}: {v}" if not (isinstance(v, dict) and "us" in v) else f"   {k:38s} {v['us'] / 1e3:8.2f} ms  {v['ops']:5d} ops")
    print("\n== micro: set-up pieces (batch 1)")
    su = micro_setup(dim, 1, 11)
    report["micro_setup"] = su
    for k, v in su.items():
        print(f"   {k:34s} {v['us']:9.1f} µs  {v['ops']:4d} ops")


if __name__ == "__main__":
    main()
