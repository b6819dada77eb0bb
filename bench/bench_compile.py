"""Compiled odeserve vs eager odeserve vs torchdiffeq vs torchode (eager, TorchScript, torch.compile).

MLP neural ODE (the time-concat MLP of ``common.py``, state/hidden 2/64 and 64/256) at batch
1, 32 and 512 over t ∈ [0, 1], float32, CPU, one thread, no_grad: RK4 with 100 steps and
dopri5 with rtol 1e-5, atol 1e-7 (odeserve in joint mode, like torchdiffeq; torchode steps
per sample, its only mode).  Side by side in one process, timed round robin:

- ``odeserve``: ``odeserve.solve`` eager (the Python loop), as a user calls it;
- ``odeserve compiled``: ``odeserve.export.compile_solve`` (Inductor, ``fullgraph=True``,
  the whole solve one graph; batch 1 gets its own graph, batches ≥ 2 share a dynamic one;
  inference graphs use Inductor's C++ wrapper), and at batch 1 the same with
  ``cpp_wrapper=False`` (Inductor's default Python wrapper);
- ``torchdiffeq`` eager, ``torchode`` eager;
- ``torchode script``: ``torch.jit.script`` of torchode's solver (its documented JIT path);
- ``torchode compile``: ``torch.compile`` of torchode's ``solve`` method (graph breaks allowed:
  torchode's loop does not compile whole).  torchode's README compiles the solver module and
  then calls ``.solve``, which bypasses the compiled ``forward`` and runs eagerly.

Reported: median time, NFE (batched f calls of one solve), overhead ratio = time / (NFE ×
bare f) with bare f one eager call of f at that batch (paired: measured right before every
solve), compile time (wall clock of the first call minus a warm call, Inductor's on-disk
cache in a fresh directory so every compile is cold, except with --quick/--cache), and the break-even number of solves after which
compiling pays off against eager odeserve and against the fastest peer.

Usage: python bench/bench_compile.py [--quick] [--repeats N] [--max-seconds S] [--cache]
Writes bench/results/compile.json and compile.md (compile_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from cold_cache import use_cold_cache  # noqa: E402  (before torch: sets Inductor's cache directory)

COLD = use_cold_cache()

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    MLP_SIZES,
    CountingF,
    RunResult,
    _torchode_rk4_class,
    autorange,
    bare_f_callable,
    environment,
    fmt,
    make_mlp,
    md_table,
    mlp_y0,
    odeserve_runner,
    time_alternating,
    torchdiffeq_runner,
    torchode_runner,
    write_json,
    write_text,
)

from odeserve.export import compile_solve  # noqa: E402

RTOL, ATOL = 1e-5, 1e-7
RK4_STEPS = 100
PEERS = ("torchdiffeq", "torchode", "torchode script", "torchode compile")
TARGET_RATIO = {"dopri5": 1.3, "rk4": 1.1}  # compiled overhead ratio at batch 1
TARGET_SPEEDUP = 2.0  # compiled vs the fastest peer at batch 1


def _first_call(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``fn`` once (compiling, if that is what its first call does): result and wall seconds."""
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _warm_time(fn: Callable[[], Any], n: int = 3) -> float:
    best = math.inf
    for _ in range(n):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# --------------------------------------------------------------------------- torchode, JIT'd


def torchode_jit(f: torch.nn.Module, method: str, mode: str) -> Callable[[torch.Tensor], Callable[[], RunResult]]:
    """torchode's solver under ``torch.jit.script`` (``mode='script'``) or with its ``solve``
    under ``torch.compile`` (``mode='compile'``), built once per (f, method) and reused for
    every batch, like ``common.torchode_runner`` otherwise (same step method, controller,
    float64 time for the fixed grid)."""
    import torchode as to

    term = to.ODETerm(f)
    if method == "rk4":
        step_method, controller = _torchode_rk4_class()(term=term), to.FixedStepController()
        tdt = torch.float64
    else:
        step_method, controller = to.Dopri5(term=term), to.IntegralController(atol=ATOL, rtol=RTOL, term=term)
        tdt = torch.float32
    solver = to.AutoDiffAdjoint(step_method, controller)
    solve = torch.jit.script(solver).solve if mode == "script" else torch.compile(solver.solve)

    def runner(y0: torch.Tensor) -> Callable[[], RunResult]:
        batch = y0.shape[0]
        ts, te = torch.zeros(batch, dtype=tdt), torch.ones(batch, dtype=tdt)
        dt0 = torch.full((batch,), 1.0 / RK4_STEPS, dtype=tdt) if method == "rk4" else None

        def run() -> RunResult:
            sol = solve(to.InitialValueProblem(y0=y0, t_start=ts, t_end=te), dt0=dt0)
            return RunResult(sol.ys[:, -1], int(sol.stats["n_f_evals"].max()))

        return run

    return runner


# --------------------------------------------------------------------------- one case


COMPILED = "odeserve compiled"
PY_WRAPPER = "odeserve compiled, Python wrapper"


def run_case(
    size: str, method: str, batches: list[int], repeats: int, max_seconds: float, peer_jit: list[int],
    py_wrapper: list[int],
) -> list[dict[str, Any]]:
    dim, hidden = MLP_SIZES[size]
    f = make_mlp(dim, hidden)
    steps = RK4_STEPS if method == "rk4" else None
    tol = dict(steps=steps) if steps else dict(rtol=RTOL, atol=ATOL)
    # compile_solve as a user calls it (inference graphs with Inductor's C++ wrapper), and
    # the same with the default Python wrapper, to show what the C++ wrapper buys.
    models = {COMPILED: compile_solve(f, solver=method, t0=0.0, t1=1.0, return_info=True, **tol),
              PY_WRAPPER: compile_solve(f, solver=method, t0=0.0, t1=1.0, return_info=True, cpp_wrapper=False, **tol)}
    jit: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if peer_jit:
        for mode in ("script", "compile"):
            try:
                jit[f"torchode {mode}"] = torchode_jit(f, method, mode)
            except Exception as e:  # noqa: BLE001 - a peer that cannot be built is reported, not fatal
                errors[f"torchode {mode}"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    rows = []
    graph_compile_s = {name: 0.0 for name in models}  # the graph a batch runs (its own or an earlier batch's)
    for batch in batches:
        y0 = mlp_y0(batch, dim)
        runners: dict[str, Callable[[], Any]] = {
            "odeserve": odeserve_runner(f, y0, 0.0, 1.0, method=method, rtol=RTOL, atol=ATOL, steps=steps),
            "torchdiffeq": torchdiffeq_runner(f, y0, 0.0, 1.0, method=method, rtol=RTOL, atol=ATOL, steps=steps),
            "torchode": torchode_runner(f, y0, 0.0, 1.0, method=method, rtol=RTOL, atol=ATOL, steps=steps),
        }
        compile_s: dict[str, float | None] = {}
        nfe: dict[str, int] = {}
        y1_compiled = None
        for name, model in models.items():
            if name == PY_WRAPPER and batch not in py_wrapper:
                continue
            run = runners[name] = (lambda model=model, y0=y0: model(y0))
            graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            (ys, info), first = _first_call(run)
            new_graph = torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before
            compile_s[name] = first - _warm_time(run) if new_graph else 0.0
            if new_graph:
                graph_compile_s[name] = compile_s[name]
            nfe[name] = int(info.nfe)
            if y1_compiled is None:
                y1_compiled = ys[-1]
        for name, make in jit.items():
            if batch not in peer_jit:
                continue
            try:
                run = make(y0)
                res, first = _first_call(run)
                compile_s[name] = first - _warm_time(run)
                runners[name] = run
                nfe[name] = res.nfe
            except Exception as e:  # noqa: BLE001
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        # Untimed counting runs: the f calls each eager library really makes.
        diffs: dict[str, float] = {}
        for name in ("odeserve", "torchdiffeq", "torchode"):
            counter = CountingF(f)
            adapter = {"odeserve": odeserve_runner, "torchdiffeq": torchdiffeq_runner, "torchode": torchode_runner}[name]
            res = adapter(counter, y0, 0.0, 1.0, method=method, rtol=RTOL, atol=ATOL, steps=steps)()
            nfe[name] = res.nfe if res.nfe >= 0 else counter.calls
            diffs[name] = float((res.y1 - y1_compiled).abs().max())
        order = ["odeserve", COMPILED, PY_WRAPPER, "torchdiffeq", "torchode", *jit]
        runners = {name: runners[name] for name in order if name in runners}
        bare = bare_f_callable(f, y0)
        timing = time_alternating(dict(runners, bare_f=bare), repeats=repeats, warmup=2,
                                  inner={"bare_f": autorange(bare, 0.01)}, max_seconds=max_seconds,
                                  reference="bare_f")
        tb = timing["bare_f"]
        case = []
        for name in runners:
            tm = timing[name]
            case.append({
                "size": size, "batch": batch, "method": method, "runner": name, "nfe": nfe[name],
                "time_ms": tm["median_s"] * 1e3, "time_min_ms": tm["min_s"] * 1e3,
                "wall_ms": tm["wall_median_s"] * 1e3, "rounds": tm["n"], "bare_f_us": tb["median_s"] * 1e6,
                "overhead_ratio": tm["median_ratio_to_ref"] / nfe[name],
                "overhead_ratio_min": tm["min_s"] / (nfe[name] * tb["min_s"]),
                "compile_s": compile_s.get(name),
                "max_abs_diff_vs_compiled": diffs.get(name),
            })
        eager = next(r for r in case if r["runner"] == "odeserve")
        peers = [r for r in case if r["runner"] in PEERS]
        fastest = min(peers, key=lambda r: r["time_ms"])
        for comp in (r for r in case if r["runner"] in models):
            comp["fastest_peer"] = fastest["runner"]
            comp["speedup_vs_fastest_peer"] = fastest["time_ms"] / comp["time_ms"]
            comp["speedup_vs_eager"] = eager["time_ms"] / comp["time_ms"]
            cs = graph_compile_s[comp["runner"]]
            for key, other in (("payoff_solves_vs_eager", eager), ("payoff_solves_vs_fastest_peer", fastest)):
                gain_ms = other["time_ms"] - comp["time_ms"]
                comp[key] = math.ceil(cs * 1e3 / gain_ms) if gain_ms > 0 else None
        comp = next(r for r in case if r["runner"] == COMPILED)
        comp["errors"] = dict(errors)
        rows.extend(case)
        print(f"  {size} {method} batch {batch}: compiled {comp['time_ms']:.3g} ms (ratio {comp['overhead_ratio']:.2f}), "
              f"eager {eager['time_ms']:.3g} ms, fastest peer {fastest['runner']} {fastest['time_ms']:.3g} ms", flush=True)
    return rows


def evaluate_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["runner"] != COMPILED or r["batch"] != 1:
            continue
        bound = TARGET_RATIO[r["method"]]
        out.append({"target": f"{r['method']} {r['size']} batch 1: compiled overhead ratio ≤ {bound}",
                    "value": r["overhead_ratio"], "met": r["overhead_ratio"] <= bound})
        out.append({"target": f"{r['method']} {r['size']} batch 1: compiled ≥ {TARGET_SPEEDUP:g}× faster than the fastest peer",
                    "value": r["speedup_vs_fastest_peer"], "peer": r["fastest_peer"],
                    "met": r["speedup_vs_fastest_peer"] >= TARGET_SPEEDUP})
    return out


# --------------------------------------------------------------------------- report


def render_md(data: dict[str, Any]) -> str:
    env, cfg = data["env"], data["config"]
    lines = [
        "# Compiled solves: odeserve compiled vs eager vs torchdiffeq vs torchode\n\n",
        f"`python bench/bench_compile.py{' --quick' if cfg['quick'] else ''}` — {env['time']}; torch {env['torch']}, "
        f"torchdiffeq {env['torchdiffeq']}, torchode {env['torchode']}; odeserve at {env.get('git_commit', '?')}"
        f"{' + uncommitted changes' if env.get('git_dirty') else ''}; CPU, 1 thread, no_grad, float32; load average "
        f"at start {tuple(round(x, 1) for x in env.get('load_avg', ()))} on {env['cpus']} CPUs (shared machine); "
        f"whole run {data['runtime_s']:.0f} s.\n\n",
        "Times: medians of this thread's CPU time over round-robin rounds (every runner and a bare f call "
        "alternate). Ratio = time / (NFE × bare f), bare f = one eager call of f at that batch, measured right "
        "before each solve (paired median). NFE: batched f calls of one solve (the compiled dopri5 solve computes "
        "f(t0, y0) itself, one more than eager odeserve, whose validation call of f is uncounted but timed). "
        "Compile: wall seconds of the first call minus a warm call, \"(reused)\" where the batch runs a graph compiled "
        "for an earlier batch (Inductor's on-disk cache "
        f"{'in a fresh directory: cold compiles' if cfg['cold'] else 'kept: compile times may be cache hits'}; the machine is shared, so wall time includes waiting). "
        "Pays off after: compile time / (time saved per solve), against eager odeserve and against the fastest "
        "peer. dopri5: rtol 1e-5, atol 1e-7; rk4: 100 steps (torchdiffeq's `rk4` is its 3/8-rule variant; "
        "torchode has no RK4: classic RK4 built from its ExplicitRungeKutta). **odeserve compiled** is "
        "`compile_solve` as a user calls it (its inference graphs use Inductor's C++ wrapper, which runs the while "
        "loop in C++); \"Python wrapper\" is the same with `cpp_wrapper=False` (Inductor's default), at batch "
        f"{', '.join(map(str, cfg['python_wrapper_batches'])) or '(none)'}. Batch 1 compiles its own graph "
        "(PyTorch specialises size 1); batch 32 compiles the dynamic-batch graph, which batch 512 reuses except "
        "where batch × state width crosses 4096 in joint-mode dopri5 (Inductor generates a chunked float32 sum "
        "for the error norm above that, a second graph). torchode under TorchScript / torch.compile runs at batch "
        f"{', '.join(map(str, cfg['peer_jit_batches'])) or '(none)'} only (each batch is a fresh torchode compile); "
        "the fastest peer is the fastest of those measured at that batch.\n\n",
    ]
    header = ["MLP", "method", "batch", "runner", "time ms", "NFE", "ratio", "compile s", "pays off after (vs eager / vs fastest peer)"]
    table = []
    for r in data["rows"]:
        name = f"**{r['runner']}**" if r["runner"] == COMPILED else r["runner"]
        payoff = ""
        if "payoff_solves_vs_eager" in r:
            payoff = " / ".join("never" if r[k] is None else str(r[k]) for k in ("payoff_solves_vs_eager", "payoff_solves_vs_fastest_peer"))
        cs = r["compile_s"]
        table.append([r["size"], r["method"], r["batch"], name, fmt(r["time_ms"]), r["nfe"],
                      f"{r['overhead_ratio']:.2f}", "" if cs is None else ("(reused)" if cs == 0 else f"{cs:.1f}"), payoff])
    lines.append(md_table(header, table, "lllrlrrrr"))
    lines.append("\n## Targets (batch 1)\n\n")
    lines.append(md_table(["target", "value", "met?"], [
        [t["target"], f"{t['value']:.2f}" + (f" (vs {t['peer']})" if "peer" in t else ""), "met" if t["met"] else "**missed**"]
        for t in data["targets"]], "lrl"))
    errs = {(r["size"], r["method"]): r.get("errors") for r in data["rows"] if r.get("errors")}
    if errs:
        lines.append("\n## Peers that failed\n\n")
        for (size, method), e in errs.items():
            for name, msg in e.items():
                lines.append(f"- {size} {method}, {name}: `{msg}`\n")
    return "".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="MLP 2/64, batch 1, no torchode JIT, few rounds; writes compile_quick.*")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 12, quick 3)")
    ap.add_argument("--max-seconds", type=float, default=None, help="time budget per case (default 30, quick 4)")
    ap.add_argument("--cache", action="store_true",
                    help="use Inductor's usual on-disk cache (compile times may be hits; --quick always does)")
    ap.add_argument("--peer-jit-batches", type=int, nargs="*", default=None,
                    help="batches at which torchode also runs under TorchScript / torch.compile (default: 1; "
                    "quick: none); each batch is a fresh torchode compile")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=r"Solver '.*' does not support callbacks")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 12)
    max_seconds = args.max_seconds or (4.0 if quick else 30.0)
    sizes = ["2/64"] if quick else list(MLP_SIZES)
    batches = [1] if quick else [1, 32, 512]
    peer_jit = args.peer_jit_batches if args.peer_jit_batches is not None else ([] if quick else [1])
    py_wrapper = [] if quick else [1]
    start = time.perf_counter()
    env = environment()
    try:
        root = Path(__file__).resolve().parent.parent
        env["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        env["git_dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "odeserve", "plugins", "export"], cwd=root,
                                               capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    rows: list[dict[str, Any]] = []
    with torch.no_grad():
        for size in sizes:
            for method in ("rk4", "dopri5"):
                print(f"{size} {method}", flush=True)
                rows.extend(run_case(size, method, batches, repeats, max_seconds, peer_jit, py_wrapper))
    data = {
        "env": env,
        "config": {"quick": quick, "peer_jit_batches": peer_jit, "python_wrapper_batches": py_wrapper, "repeats": repeats, "max_seconds_per_case": max_seconds, "cold": COLD,
                   "rtol": RTOL, "atol": ATOL, "rk4_steps": RK4_STEPS, "threads": torch.get_num_threads(),
                   "env_TORCHINDUCTOR": {k: v for k, v in os.environ.items() if k.startswith("TORCHINDUCTOR")}},
        "rows": rows,
        "targets": evaluate_targets(rows),
        "runtime_s": time.perf_counter() - start,
    }
    suffix = "_quick" if quick else ""
    write_json(f"compile{suffix}.json", data)
    write_text(f"compile{suffix}.md", render_md(data))
    print(render_md(data))


if __name__ == "__main__":
    main()
