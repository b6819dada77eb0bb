"""Shared pieces of the odeserve benchmarks.

* the MLP neural-ODE family (:func:`make_mlp`) and the Van der Pol batch (:func:`vdp_f`);
* :func:`time_alternating`: times several callables round robin (warm-up first) so that the
  noise of a shared machine hits every peer alike; returns medians;
* :func:`bare_f_callable`: one call of ``f`` at a batch, for the overhead ratio
  ``time / (NFE × bare f)``;
* peer adapters with one shape: ``adapter(f, y0, t0, t1, ...) -> run()`` where ``run()``
  returns a :class:`RunResult` (final state, batched f calls as the library reports them,
  per-sample step statistics when the library has them);
* :class:`CountingF`: wraps ``f`` and counts calls, rows seen, and (through torchdiffeq's
  ``callback_accept_step`` / ``callback_reject_step`` hooks) accepted and rejected steps;
* :func:`write_json` / :func:`md_table` / :func:`write_text` into ``bench/results/``.

Everything here runs on CPU/any device; adapters never read the clock themselves.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

RESULTS = Path(__file__).resolve().parent / "results"

# --------------------------------------------------------------------------- problems


class TimeConcatMLP(nn.Module):
    """``f(t, z) = L3(tanh(L2(tanh(L1([z, t])))))``: Linear(dim+1→hidden) → tanh →
    Linear(hidden→hidden) → tanh → Linear(hidden→dim).

    ``t`` may be 0-d (one time for the batch: odeserve joint, torchdiffeq) or ``(batch,)``
    (torchode, odeserve per_sample).  Weights are PyTorch's default init ×2 so the dynamics
    are not close to linear/trivial (the adaptive solvers take tens of steps on [0, 1])."""

    def __init__(self, dim: int, hidden: int, weight_scale: float = 2.0) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.l1 = nn.Linear(dim + 1, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, dim)
        with torch.no_grad():
            for lin in (self.l1, self.l2, self.l3):
                lin.weight.mul_(weight_scale)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        rows = z.shape[0]
        tt = t.to(z.dtype).reshape(-1, 1)
        if tt.shape[0] != rows:
            tt = tt.expand(rows, 1)
        h = torch.tanh(self.l1(torch.cat([z, tt], dim=1)))
        h = torch.tanh(self.l2(h))
        return self.l3(h)


MLP_SIZES: dict[str, tuple[int, int]] = {"2/64": (2, 64), "64/256": (64, 256)}


def make_mlp(dim: int, hidden: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> TimeConcatMLP:
    torch.manual_seed(seed)
    return TimeConcatMLP(dim, hidden).to(dtype).eval().requires_grad_(False)


def mlp_y0(batch: int, dim: int, *, seed: int = 1, dtype: torch.dtype = torch.float32) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=g, dtype=torch.float64).to(dtype)


def vdp_f(t: Tensor, y: Tensor) -> Tensor:
    """Van der Pol with μ carried in the state: ``y = (x, v, μ)``, ``μ' = 0``.

    Carrying μ (instead of indexing a μ vector by row) keeps f correct when a solver hands
    it only a subset of the batch (odeserve's per-sample compaction)."""
    x, v, mu = y[:, 0:1], y[:, 1:2], y[:, 2:3]
    return torch.cat([v, mu * (1 - x * x) * v - x, torch.zeros_like(mu)], dim=1)


def vdp_y0(batch: int, mu_lo: float, mu_hi: float, dtype: torch.dtype = torch.float64) -> Tensor:
    mu = torch.linspace(mu_lo, mu_hi, batch, dtype=torch.float64)
    return torch.stack([torch.full_like(mu, 2.0), torch.zeros_like(mu), mu], dim=1).to(dtype)


# --------------------------------------------------------------------------- counting


class CountingF:
    """Counts what a solver does with ``f``: batched calls, rows evaluated (the sum of the
    batch sizes f saw: per-sample evaluations), and accepted/rejected steps where the
    library reports them through torchdiffeq-style callbacks.  Plain object on purpose:
    torchdiffeq looks the callbacks up with ``getattr``; the call itself just forwards."""

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.f = f
        self.calls = 0
        self.rows = 0
        self.accepted = 0
        self.rejected = 0

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        self.rows += int(y.shape[0]) if y.ndim else 1
        return self.f(t, y)

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.accepted += 1

    def callback_reject_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.rejected += 1

    def counts(self) -> dict[str, int]:
        return {"calls": self.calls, "rows": self.rows, "accepted": self.accepted, "rejected": self.rejected}


# --------------------------------------------------------------------------- adapters


@dataclass
class RunResult:
    y1: Tensor  # final state, (batch, D)
    nfe: int  # batched f calls as the library reports them
    stats: dict[str, Any] = field(default_factory=dict)  # library extras (per-sample steps, ...)


Runner = Callable[[], RunResult]


def odeserve_runner(
    f: Callable, y0: Tensor, t0: float, t1: float, *, method: str = "dopri5", rtol: float = 1e-5,
    atol: float = 1e-7, steps: int | None = None, batch: str = "joint", **kwargs: Any,
) -> Runner:
    """``odeserve.solve`` as it is called by a user (including its input checks)."""
    import odeserve

    t = torch.tensor([t0, t1], dtype=y0.dtype)
    opts: dict[str, Any] = dict(solver=method, batch=batch, **kwargs)
    if steps is not None:
        opts["steps"] = steps
    else:
        opts.update(rtol=rtol, atol=atol)

    def run() -> RunResult:
        sol = odeserve.solve(f, y0, t, **opts)
        ys = sol.ys
        stats = dict(sol.stats)
        return RunResult(ys[-1], int(stats["nfe"]), stats)

    return run


def torchdiffeq_runner(
    f: Callable, y0: Tensor, t0: float, t1: float, *, method: str = "dopri5", rtol: float = 1e-5,
    atol: float = 1e-7, steps: int | None = None, **kwargs: Any,
) -> Runner:
    """``torchdiffeq.odeint(f, y0, t, method=..., rtol, atol, options=dict(step_size=...))``.
    torchdiffeq reports no NFE: ``nfe`` is -1 here; count with :class:`CountingF`."""
    from torchdiffeq import odeint

    t = torch.tensor([t0, t1], dtype=y0.dtype)
    opts: dict[str, Any] = dict(method=method, **kwargs)
    if steps is not None:
        opts["options"] = dict(step_size=(t1 - t0) / steps)
    else:
        opts.update(rtol=rtol, atol=atol)

    def run() -> RunResult:
        ys = odeint(f, y0, t, **opts)
        return RunResult(ys[-1], -1)

    return run


def _torchode_rk4_class() -> type:
    """Classic RK4 through torchode's public ERK machinery (torchode ships only Euler,
    Heun, Dopri5, Tsit5).  The embedded weights are set equal to ``b`` (zero error
    estimate); with a FixedStepController the estimate is never used."""
    import torchode as to
    from torchode.interpolation import LinearInterpolation
    from torchode.single_step_methods.runge_kutta import ButcherTableau, ExplicitRungeKutta

    b = [1 / 6, 1 / 3, 1 / 3, 1 / 6]
    tab = ButcherTableau.from_lists(c=[0.0, 0.5, 0.5, 1.0], a=[[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], b=b, b_low_order=b)

    class RK4(ExplicitRungeKutta):
        def __init__(self, term: to.ODETerm | None = None) -> None:
            super().__init__(term, tab)

        def convergence_order(self) -> int:
            return 4

        def build_interpolation(self, data: Any) -> Any:
            return LinearInterpolation(data.t0, data.dt, data.y0, data.y1)

    return RK4


def torchode_runner(
    f: Callable, y0: Tensor, t0: float, t1: float, *, method: str = "dopri5", rtol: float = 1e-5,
    atol: float = 1e-7, steps: int | None = None, time_dtype: torch.dtype | None = None,
) -> Runner:
    """torchode: ``ODETerm`` + ``Dopri5`` + ``IntegralController`` + ``AutoDiffAdjoint`` on
    ``InitialValueProblem(y0, t_start, t_end)`` (per-sample stepping over the batch).  f gets
    ``t`` per sample.  ``method='rk4'`` uses a custom RK4 tableau + FixedStepController.
    Fixed steps run with float64 time by default so that 100 × dt lands on t1 (float32
    accumulation would add a tiny 101st step)."""
    import torchode as to

    batch = y0.shape[0]
    term = to.ODETerm(f)
    if steps is not None:
        tdt = time_dtype or torch.float64
        assert method == "rk4", method
        step_method = _torchode_rk4_class()(term=term)
        controller = to.FixedStepController()
        dt0 = torch.full((batch,), (t1 - t0) / steps, dtype=tdt)
    else:
        tdt = time_dtype or y0.dtype
        assert method == "dopri5", method
        step_method = to.Dopri5(term=term)
        controller = to.IntegralController(atol=atol, rtol=rtol, term=term)
        dt0 = None
    solver = to.AutoDiffAdjoint(step_method, controller)
    ts = torch.full((batch,), t0, dtype=tdt)
    te = torch.full((batch,), t1, dtype=tdt)

    def run() -> RunResult:
        problem = to.InitialValueProblem(y0=y0, t_start=ts, t_end=te)
        sol = solver.solve(problem, dt0=dt0)
        st = sol.stats
        return RunResult(sol.ys[:, -1], int(st["n_f_evals"].max()), {
            "n_steps": st["n_steps"], "n_accepted": st["n_accepted"], "status": sol.status,
        })

    return run


ADAPTERS: dict[str, Callable[..., Runner]] = {
    "odeserve": odeserve_runner,
    "torchdiffeq": torchdiffeq_runner,
    "torchode": torchode_runner,
}


# --------------------------------------------------------------------------- timing


def bare_f_callable(f: Callable, y: Tensor, t: Tensor | None = None) -> Callable[[], Any]:
    """One call of ``f`` at this batch (0-d ``t`` by default)."""
    t = torch.zeros((), dtype=y.dtype) if t is None else t
    return lambda: f(t, y)


def autorange(fn: Callable[[], Any], target_s: float = 0.005, max_inner: int = 10_000) -> int:
    """Calls per timing sample so one sample lasts about ``target_s`` (for sub-ms callables)."""
    fn()
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-7)
    return int(max(1, min(max_inner, math.ceil(target_s / one))))


def time_alternating(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 15, warmup: int = 2,
    inner: dict[str, int] | None = None, max_seconds: float | None = None, clock: str = "cpu",
    reference: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Time callables round robin: every round runs each once (``inner[name]`` calls per
    sample, time divided by it), the starting callable rotating between rounds so none
    always follows the same neighbour.  ``warmup`` untimed rounds first; garbage
    collection is off inside a round.  Stops early after ``max_seconds`` (at least 3
    rounds).

    Two clocks are read around every sample: wall (``perf_counter``) and a CPU clock,
    this thread's (``thread_time``) or, with ``clock="process"``, the whole process's
    (``process_time``: for runtimes that run work on threads of their own, e.g. XLA).  On
    a shared machine the CPU clock leaves out the time the process sat descheduled, so it
    is the steadier of the two for single-threaded torch (``torch.set_num_threads(1)``:
    all work runs on the calling thread); ``clock`` picks which one
    ``median_s``/``min_s``/``q1_s``/``q3_s`` describe ("cpu", "process" or "wall"); both
    medians and all samples are returned (``wall_median_s``, ``cpu_median_s``,
    ``wall_s``, ``cpu_s``).

    ``reference`` (a key of ``fns``, e.g. the bare f call) is run and timed right before
    every other callable in every round instead of once per round; each callable then also
    gets ``median_ratio_to_ref``, the median over rounds of its time divided by the
    reference time measured just before it (paired, so slow drifts in machine load cancel),
    and the reference's samples are all pooled into its own medians.  Each reference sample
    is preceded by one untimed call, so it measures the warm, steady-state cost (right after
    a long solve of another library a first call runs on cold caches)."""
    names = [n for n in fns if n != reference]
    inner = {n: (inner or {}).get(n, 1) for n in fns}
    for _ in range(warmup):
        for n in fns:
            for _ in range(inner[n]):
                fns[n]()
    samples: dict[str, list[float]] = {n: [] for n in fns}
    cpu: dict[str, list[float]] = {n: [] for n in fns}
    paired: dict[str, list[float]] = {n: [] for n in names}  # reference sample taken just before

    cpu_clock = time.process_time if clock == "process" else time.thread_time

    def one(n: str) -> tuple[float, float]:
        fn, m = fns[n], inner[n]
        if n == reference:
            fn()  # untimed: the reference is measured warm (steady state), not after a cold switch
        c = cpu_clock()
        t = time.perf_counter()
        for _ in range(m):
            fn()
        w_s, c_s = (time.perf_counter() - t) / m, (cpu_clock() - c) / m
        samples[n].append(w_s)
        cpu[n].append(c_s)
        return w_s, c_s

    start = time.perf_counter()
    gc_was = gc.isenabled()
    try:
        for r in range(repeats):
            gc.collect()
            gc.disable()
            k = r % len(names)
            for n in names[k:] + names[:k]:
                if reference is not None:
                    w_r, c_r = one(reference)
                    paired[n].append(w_r if clock == "wall" else c_r)
                one(n)
            gc.enable()
            if max_seconds is not None and r >= 2 and time.perf_counter() - start > max_seconds:
                break
    finally:
        if gc_was:
            gc.enable()
    out: dict[str, dict[str, Any]] = {}
    for n in fns:
        w, c = samples[n], cpu[n]
        main = w if clock == "wall" else c
        qs = statistics.quantiles(main, n=4) if len(main) >= 2 else [main[0]] * 3
        out[n] = {"median_s": statistics.median(main), "min_s": min(main), "q1_s": qs[0], "q3_s": qs[2],
                  "wall_median_s": statistics.median(w), "cpu_median_s": statistics.median(c),
                  "clock": clock, "n": len(main), "inner": inner[n], "wall_s": w, "cpu_s": c}
        if reference is not None and n != reference:
            out[n]["ref_before_s"] = paired[n]
            out[n]["median_ratio_to_ref"] = statistics.median(x / r for x, r in zip(main, paired[n]))
    return out


# --------------------------------------------------------------------------- output


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for mod in ("torchdiffeq", "torchode", "odeserve"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            info[mod] = "?"
    try:
        import subprocess

        root = Path(__file__).resolve().parent.parent
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "odeserve", "plugins"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
        info["git_dirty_library"] = bool(dirty)
    except Exception:  # noqa: BLE001
        pass
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:
        pass
    return info


def _jsonable(x: Any) -> Any:
    if isinstance(x, Tensor):
        return x.tolist() if x.numel() <= 4096 else f"<tensor {tuple(x.shape)}>"
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(_jsonable(data), indent=1) + "\n")
    return path


def write_text(name: str, text: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(text)
    return path


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one char per column (l/r/c), default: first
    column left, the rest right."""
    align = align or ("l" + "r" * (len(header) - 1))
    sep = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:.0f}"
