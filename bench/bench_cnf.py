"""CNF training cost: exact trace vs Hutchinson's estimator, adjoint vs autograd gradients.

One training iteration = ``log_prob`` of a batch (the augmented ``(z, Δ)`` solve), the
backward pass, one Adam step.  The field is the time-concat MLP of ``common.py``
(dim+1 → hidden → hidden → dim, tanh), float32, batch 256, fixed-step RK4 with 8 steps (so
every configuration makes the same 32 evaluations of the augmented field and only the cost
per evaluation differs), one intra-op thread.

Time: median over the timed iterations of the process's CPU time (``time.process_time``;
the machine is shared, so wall-clock time, also recorded, includes time spent descheduled).
Memory: each configuration runs in a fresh subprocess; peak = ``resource.getrusage`` max RSS
at the end, "training" = that peak minus the resident set measured just before the timed
iterations (after imports, model and a tiny warm-up iteration that loads every code path).
So it counts what the iterations allocate (activations kept for the backward pass, the
adjoint's state, the Jacobian rows of the exact trace) on top of the process' baseline;
the allocator may keep freed pages, so it is a high-water mark, not live memory.

Usage: python bench/bench_cnf.py [--quick] [--dims 2 16 64] [--iters N] [--batch B]
Writes bench/results/cnf.json and cnf.md (cnf_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TRACES = ("exact", "hutchinson")
SENSITIVITIES = ("autograd", "adjoint")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process."""
    import torch

    from common import TimeConcatMLP
    from odeserve.cnf import CNF

    torch.set_num_threads(1)
    torch.manual_seed(0)
    dim, batch = cfg["dim"], cfg["batch"]
    f = TimeConcatMLP(dim, cfg["hidden"], weight_scale=1.0)
    cnf = CNF(f, dim, trace=cfg["trace"], noise="rademacher", solver="rk4", steps=cfg["steps"],
              sensitivity=cfg["sensitivity"])
    opt = torch.optim.Adam(cnf.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    data = torch.randn(cfg["iters"] + 1, batch, dim, generator=g) * 0.7 + 0.3

    def iteration(x: torch.Tensor) -> float:
        loss = -cnf.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss)

    iteration(data[0, :2])  # loads every code path at a negligible size
    baseline = _rss_mb()
    cpu, wall = [], []
    for i in range(cfg["iters"]):
        c0, w0 = time.process_time(), time.perf_counter()
        iteration(data[i + 1])
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {**cfg, "cpu_s": cpu, "wall_s": wall, "cpu_median_s": statistics.median(cpu),
           "wall_median_s": statistics.median(wall), "rss_baseline_mb": baseline, "rss_peak_mb": peak,
           "training_mb": peak - baseline}
    if cfg["trace"] == "hutchinson" and cfg["sensitivity"] == "autograd":
        # The noise Hutchinson adds to the loss, against the minibatch noise already there
        # (after the timed iterations, so it does not touch the memory figures).
        with torch.no_grad():
            probes = [float(-cnf.log_prob(data[0]).mean()) for _ in range(cfg["noise_draws"])]
            batches = [float(-cnf.log_prob(data[i], trace="exact").mean()) for i in range(cfg["noise_draws"])]
        out.update(probe_std=statistics.stdev(probes), batch_std=statistics.stdev(batches))
    return out


def run_config(cfg: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**cfg, "error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        return {**cfg, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def crossover(rows: list[dict[str, Any]], key: str, sensitivity: str) -> int | None:
    """The smallest dimension from which Hutchinson is cheaper at every larger dimension."""
    dims = sorted({r["dim"] for r in rows})
    by = {(r["dim"], r["trace"]): r for r in rows if r["sensitivity"] == sensitivity and "error" not in r}
    wins = [d for d in dims if (d, "exact") in by and (d, "hutchinson") in by
            and by[(d, "hutchinson")][key] < by[(d, "exact")][key]]
    for i, d in enumerate(dims):
        if all(x in wins for x in dims[i:]):
            return d
    return None


def report(rows: list[dict[str, Any]], args: argparse.Namespace, env: dict[str, Any]) -> str:
    from common import fmt, md_table

    by = {(r["dim"], r["sensitivity"], r["trace"]): r for r in rows}
    table = []
    for dim in args.dims:
        for sens in SENSITIVITIES:
            ex, hu = by.get((dim, sens, "exact"), {}), by.get((dim, sens, "hutchinson"), {})

            def cell(r: dict[str, Any], k: str, scale: float = 1.0) -> str:
                return "failed" if "error" in r else fmt(r[k] * scale) if k in r else "–"

            speed = ex["cpu_median_s"] / hu["cpu_median_s"] if "cpu_median_s" in ex and "cpu_median_s" in hu else None
            mem = ex["training_mb"] / hu["training_mb"] if ex.get("training_mb", 0) > 0 and hu.get("training_mb", 0) > 0 else None
            table.append([dim, sens, cell(ex, "cpu_median_s", 1e3), cell(hu, "cpu_median_s", 1e3), fmt(speed),
                          cell(ex, "training_mb"), cell(hu, "training_mb"), fmt(mem),
                          cell(ex, "rss_peak_mb"), cell(hu, "rss_peak_mb")])
    header = ["dim", "gradients", "exact ms/iter", "Hutchinson ms/iter", "exact / Hutchinson time",
              "exact MB", "Hutchinson MB", "exact / Hutchinson MB", "exact peak RSS MB", "Hutchinson peak RSS MB"]
    lines = [
        "# CNF training: exact trace vs Hutchinson, adjoint vs autograd\n",
        f"`python bench/bench_cnf.py{' --quick' if args.quick else ''}` — {env['when']}; torch {env['torch']}; "
        f"CPU, 1 thread; load average at start {env['load']} on {env['cpus']} CPUs (shared machine).\n",
        f"One iteration = `log_prob` of a batch of {args.batch} + backward + Adam step; time-concat MLP "
        f"dim+1 → {args.hidden} → {args.hidden} → dim (tanh), float32; RK4 with {args.steps} fixed steps "
        f"({4 * args.steps} evaluations of the augmented field), t ∈ [0, 1]; Hutchinson with Rademacher probes. "
        f"Time: median CPU time of {args.iters} iterations. Memory: fresh process per row; "
        "\"MB\" = max RSS (`resource.getrusage`) minus the resident set just before the timed iterations, "
        "i.e. what training allocates; peak RSS includes the process baseline (torch itself).\n",
        md_table(header, table),
    ]
    notes = []
    def where(d: int | None) -> str:
        if d is None:
            return "at none of the dims measured"
        return "at every dim measured" if d == min(args.dims) else f"from dim {d} on"

    for sens in SENSITIVITIES:
        t = crossover(rows, "cpu_median_s", sens)
        m = crossover(rows, "training_mb", sens)
        notes.append(f"- {sens} gradients: Hutchinson is faster {where(t)} ({', '.join(map(str, args.dims))}) "
                     f"and needs less memory {where(m)}.")
    noise = [[r["dim"], fmt(r["probe_std"]), fmt(r["batch_std"]), fmt(r["probe_std"] / r["batch_std"])]
             for r in rows if "probe_std" in r]
    lines.append("Where Hutchinson starts paying off:\n\n" + "\n".join(notes) + "\n")
    if noise:
        lines.append("The price is variance: the std of the training loss (−mean log p, nats) over Hutchinson "
                     "probes on one batch, against its std over minibatches with the exact trace, at the weights "
                     "reached (autograd rows). A ratio well below 1 means the probe adds little to the noise "
                     "minibatching already puts into every gradient step.\n\n"
                     + md_table(["dim", "std over probes", "std over minibatches", "ratio"], noise))
    failed = [r for r in rows if "error" in r]
    if failed:
        lines.append("Failed: " + "; ".join(f"dim {r['dim']} {r['sensitivity']} {r['trace']}: {r['error']}" for r in failed) + "\n")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="dims 2 and 16, batch 64, 2 iterations")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 16, 64])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--timeout", type=float, default=600.0, help="per configuration, seconds")
    p.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.quick:
        args.dims, args.batch, args.iters = [2, 16], 64, 2

    import os

    import torch

    from common import write_json, write_text

    env = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__,
           "load": tuple(round(x, 1) for x in os.getloadavg()), "cpus": os.cpu_count()}
    rows = []
    for dim in args.dims:
        for sens in SENSITIVITIES:
            for trace in TRACES:
                cfg = {"dim": dim, "sensitivity": sens, "trace": trace, "batch": args.batch,
                       "hidden": args.hidden, "steps": args.steps, "iters": args.iters,
                       "noise_draws": min(args.iters + 1, 6)}
                r = run_config(cfg, args.timeout)
                rows.append(r)
                msg = r.get("error") or f"{r['cpu_median_s'] * 1e3:.0f} ms/iter, +{r['training_mb']:.0f} MB"
                print(f"dim {dim:3d} {sens:9s} {trace:10s} {msg}", flush=True)
    suffix = "_quick" if args.quick else ""
    write_json(f"cnf{suffix}.json", {"environment": env, "settings": vars(args), "rows": rows})
    path = write_text(f"cnf{suffix}.md", report(rows, args, env))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
