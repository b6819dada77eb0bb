"""Core benchmark: odeserve vs torchdiffeq vs torchode on CPU, single thread, float32, no_grad.

(a) MLP neural ODE (time-concat MLP, state/hidden 2/64 and 64/256, batch 1/32/512) over
    t ∈ [0, 1]: dopri5 (rtol 1e-5, atol 1e-7) and rk4 with 100 steps.  odeserve runs in
    joint mode; torchode steps per sample (its only mode) and has no RK4, so its RK4 row is
    classic RK4 built from torchode's own ExplicitRungeKutta + FixedStepController.
    Reported: median time, NFE (batched f calls), overhead ratio = time / (NFE × bare f),
    where "bare f" is one call of f at that batch, timed in the same round robin.
(b) 256 Van der Pol oscillators, μ = linspace(0.5, 5), y0 = (2, 0), t ∈ [0, 10], μ carried
    in the state as (x, v, μ) with μ' = 0; dopri5 rtol 1e-5 atol 1e-7.  odeserve per_sample
    vs torchode (per-sample stepping, no compaction) vs torchdiffeq (joint).  Reported:
    batched f calls, per-sample f evaluations, useful-evaluation share, time.

Usage: python bench/bench_core.py [--quick] [--repeats N] [--max-seconds S]
Writes bench/results/core.json and bench/results/core.md (core_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ADAPTERS,
    MLP_SIZES,
    CountingF,
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
    vdp_f,
    vdp_y0,
    write_json,
    write_text,
)

LIBS = ("odeserve", "torchdiffeq", "torchode")
RTOL, ATOL = 1e-5, 1e-7
RK4_STEPS = 100
VDP = dict(batch=256, mu_lo=0.5, mu_hi=5.0, t0=0.0, t1=10.0)

TARGETS_A = [
    # (description, size, batch, method, bound, peer range as given)
    ("dopri5 overhead ratio, batch 1, MLP 64/256", "64/256", 1, "dopri5", 2.0, "4.8–5.8"),
    ("dopri5 overhead ratio, batch 512, MLP 64/256", "64/256", 512, "dopri5", 1.1, "1.2–1.6"),
    ("rk4 overhead ratio, batch 1, MLP 64/256", "64/256", 1, "rk4", 1.3, "1.8–3.6"),
]


def _quiet_torchdiffeq() -> None:
    # CountingF offers torchdiffeq's step callbacks; fixed-grid solvers warn they ignore them.
    warnings.filterwarnings("ignore", message=r"Solver '.*' does not support callbacks")


# --------------------------------------------------------------------------- (a)


def mlp_case(size: str, batch: int, method: str, repeats: int, max_seconds: float) -> list[dict[str, Any]]:
    dim, hidden = MLP_SIZES[size]
    f = make_mlp(dim, hidden)
    y0 = mlp_y0(batch, dim)
    steps = RK4_STEPS if method == "rk4" else None
    runners = {lib: ADAPTERS[lib](f, y0, 0.0, 1.0, method=method, rtol=RTOL, atol=ATOL, steps=steps) for lib in LIBS}

    # Untimed counting runs: true f calls, library NFE, agreement with odeserve.
    info: dict[str, dict[str, Any]] = {}
    for lib in LIBS:
        counter = CountingF(f)
        res = ADAPTERS[lib](counter, y0, 0.0, 1.0, method=method, rtol=RTOL, atol=ATOL, steps=steps)()
        nfe = res.nfe if res.nfe >= 0 else counter.calls
        steps_taken = None
        if lib == "odeserve":
            steps_taken = int(res.stats["steps"].max())
        elif lib == "torchode":
            steps_taken = int(res.stats["n_steps"].max())
        elif method == "dopri5":
            steps_taken = counter.accepted + counter.rejected
        else:
            steps_taken = counter.calls // 4
        info[lib] = {"nfe": nfe, "f_calls": counter.calls, "steps": steps_taken, "y1": res.y1}
    ref = info["odeserve"]["y1"]
    for lib in LIBS:
        info[lib]["max_abs_diff_vs_odeserve"] = float((info[lib].pop("y1") - ref).abs().max())

    bare = bare_f_callable(f, y0)
    fns = dict(runners, bare_f=bare)
    timing = time_alternating(fns, repeats=repeats, warmup=2, inner={"bare_f": autorange(bare, 0.01)},
                              max_seconds=max_seconds, reference="bare_f")
    tb = timing["bare_f"]
    rows = []
    for lib in LIBS:
        tm = timing[lib]
        nfe = info[lib]["nfe"]
        rows.append({
            "size": size, "batch": batch, "method": method, "lib": lib, **info[lib],
            "time_ms": tm["median_s"] * 1e3, "time_min_ms": tm["min_s"] * 1e3,
            "time_q1_ms": tm["q1_s"] * 1e3, "time_q3_ms": tm["q3_s"] * 1e3,
            "wall_ms": tm["wall_median_s"] * 1e3, "rounds": tm["n"],
            "bare_f_us": tb["median_s"] * 1e6, "bare_f_min_us": tb["min_s"] * 1e6,
            "bare_f_wall_us": tb["wall_median_s"] * 1e6,
            # paired: median over rounds of time / (NFE × the bare-f sample taken just before it)
            "overhead_ratio": tm["median_ratio_to_ref"] / nfe,
            "overhead_ratio_of_medians": tm["median_s"] / (nfe * tb["median_s"]),
            "overhead_ratio_min": tm["min_s"] / (nfe * tb["min_s"]),
            "overhead_ratio_wall": tm["wall_median_s"] / (nfe * tb["wall_median_s"]),
            "per_step_overhead_us": (tm["median_s"] - nfe * tb["median_s"]) / max(1, info[lib]["steps"] or 1) * 1e6,
        })
    return rows


# --------------------------------------------------------------------------- (b)


def vdp_case(repeats: int, max_seconds: float, batch: int, dtype: torch.dtype, timed: bool = True,
             reference: bool = False) -> dict[str, Any]:
    y0 = vdp_y0(batch, VDP["mu_lo"], VDP["mu_hi"], dtype)
    t0, t1 = VDP["t0"], VDP["t1"]
    mk = {
        "odeserve": lambda f: odeserve_runner(f, y0, t0, t1, method="dopri5", rtol=RTOL, atol=ATOL, batch="per_sample"),
        "torchode": lambda f: torchode_runner(f, y0, t0, t1, method="dopri5", rtol=RTOL, atol=ATOL),
        "torchdiffeq": lambda f: torchdiffeq_runner(f, y0, t0, t1, method="dopri5", rtol=RTOL, atol=ATOL),
    }
    out: dict[str, Any] = {"batch": batch, "dtype": str(dtype).replace("torch.", ""), "libs": {}}
    ref = _vdp_reference(y0) if reference else None
    for lib, make in mk.items():
        c = CountingF(vdp_f)
        res = make(c)()
        row: dict[str, Any] = {"f_calls": c.calls, "row_evals": c.rows}
        if lib == "odeserve":
            acc, rej = res.stats["accepted"], res.stats["rejected"]
            # prepare() evaluates f once more (check_f) outside the solve's statistics.
            row_evals = c.rows - batch
            row.update(batched_calls=res.nfe, useful=6 * int(acc.sum()) / row_evals,
                       useful_reported=float(res.stats["useful_evals"]), per_sample_evals=row_evals,
                       accepted_sum=int(acc.sum()), rejected_sum=int(rej.sum()),
                       steps_max=int((acc + rej).max()), accepted_min=int(acc.min()), accepted_max=int(acc.max()))
        elif lib == "torchode":
            acc, steps = res.stats["n_accepted"], res.stats["n_steps"]
            calls = res.nfe
            row.update(batched_calls=calls, useful=6 * int(acc.sum()) / (calls * batch), per_sample_evals=calls * batch,
                       accepted_sum=int(acc.sum()), rejected_sum=int((steps - acc).sum()),
                       steps_max=int(steps.max()), accepted_min=int(acc.min()), accepted_max=int(acc.max()))
        else:
            row.update(batched_calls=c.calls, useful=6 * c.accepted / c.calls, per_sample_evals=c.rows,
                       accepted_sum=c.accepted * batch, rejected_sum=c.rejected * batch,
                       steps_max=c.accepted + c.rejected, accepted_min=c.accepted, accepted_max=c.accepted)
        if ref is not None:
            row["max_abs_err_vs_scipy"] = float((res.y1.double()[:, :2] - ref).abs().max())
        out["libs"][lib] = row
    if timed:
        timing = time_alternating({lib: make(vdp_f) for lib, make in mk.items()}, repeats=repeats, warmup=1,
                                  max_seconds=max_seconds)
        for lib, tm in timing.items():
            r = out["libs"][lib]
            r.update(time_ms=tm["median_s"] * 1e3, time_min_ms=tm["min_s"] * 1e3, wall_ms=tm["wall_median_s"] * 1e3,
                     rounds=tm["n"], us_per_batched_call=tm["median_s"] / r["batched_calls"] * 1e6)
    return out


def _vdp_reference(y0: torch.Tensor) -> torch.Tensor:
    """Final states from scipy DOP853 at rtol 1e-12 (float64), for an accuracy column."""
    from scipy.integrate import solve_ivp

    finals = []
    for x, v, mu in y0.double().tolist():
        sol = solve_ivp(lambda t, y, m=mu: [y[1], m * (1 - y[0] ** 2) * y[1] - y[0]], (VDP["t0"], VDP["t1"]),
                        [x, v], method="DOP853", rtol=1e-12, atol=1e-12)
        finals.append(sol.y[:, -1])
    return torch.from_numpy(np.array(finals, dtype=np.float64))


# --------------------------------------------------------------------------- report


def evaluate_targets(mlp_rows: list[dict[str, Any]], vdp: dict[str, Any] | None) -> list[dict[str, Any]]:
    out = []
    for desc, size, batch, method, bound, peers in TARGETS_A:
        row = next((r for r in mlp_rows if (r["size"], r["batch"], r["method"], r["lib"]) == (size, batch, method, "odeserve")), None)
        if row is None:
            continue
        peer = [r["overhead_ratio"] for r in mlp_rows
                if (r["size"], r["batch"], r["method"]) == (size, batch, method) and r["lib"] != "odeserve"]
        out.append({"target": f"{desc} ≤ {bound}", "value": row["overhead_ratio"], "value_min_based": row["overhead_ratio_min"],
                    "value_of_medians": row["overhead_ratio_of_medians"],
                    "met": row["overhead_ratio"] <= bound, "peers_measured_here": peer, "peers_given": peers})
    if vdp is not None:
        o = vdp["libs"]["odeserve"]
        out.append({"target": "VdP batched f calls ≤ 656 (torchode's figure)", "value": o["batched_calls"],
                    "met": o["batched_calls"] <= 656, "peers_measured_here": [vdp["libs"]["torchode"]["batched_calls"]],
                    "peers_given": "656 (torchode)"})
        out.append({"target": "VdP useful evaluations ≥ 95%", "value": o["useful"], "met": o["useful"] >= 0.95,
                    "peers_measured_here": [vdp["libs"]["torchode"]["useful"]], "peers_given": "71% (torchode)"})
    return out


def render_md(data: dict[str, Any]) -> str:
    env, cfg = data["env"], data["config"]
    lines = [
        "# Core benchmark: odeserve vs torchdiffeq vs torchode\n\n",
        f"`python bench/bench_core.py{' --quick' if cfg['quick'] else ''}` — {env['time']}; torch {env['torch']}, "
        f"torchdiffeq {env['torchdiffeq']}, torchode {env['torchode']}; odeserve at {env.get('git_commit', '?')}"
        f"{' + uncommitted library changes' if env.get('git_dirty_library') else ''}; CPU, 1 thread, no_grad; "
        f"load average at start {tuple(round(x, 1) for x in env.get('load_avg', ()))} on {env['cpus']} CPUs (shared machine).\n\n",
        "Times are medians of this thread's CPU time (`time.thread_time`) over round-robin rounds in which every "
        "library and the bare f call run alternately (warm-up first); the machine is shared, so wall-clock times "
        "(in core.json) include time spent descheduled. Overhead ratio = time / (NFE × bare f), bare f = one call of "
        "f at that batch. The bare f call is timed (warm: after one untimed call) right before every solve in every round; \"ratio\" is the median "
        "over rounds of solve time / (NFE × the bare-f time measured just before it) — paired, so drifts in the "
        "machine's load cancel; \"ratio (medians)\" divides the two medians instead, \"ratio (min)\" the two fastest "
        "samples (least interference). NFE = batched f calls the solve needs (odeserve's `stats['nfe']`; "
        "odeserve's `solve()` makes one extra validation call of f (`check_f`) that is not in its NFE, so it counts "
        "as overhead here).\n\n",
    ]
    lines.append("## (a) MLP neural ODE, t ∈ [0, 1], float32\n\n")
    lines.append(
        f"dopri5: rtol {RTOL:g}, atol {ATOL:g} (each library's default controller: odeserve PI, torchdiffeq I, "
        f"torchode IntegralController). rk4: {RK4_STEPS} fixed steps (torchdiffeq `rk4` is its 3/8-rule variant; "
        "torchode has no RK4, its row is classic RK4 built from torchode's ExplicitRungeKutta + FixedStepController). "
        "torchode steps each sample separately, so its NFE is the slowest sample's.\n\n"
    )
    header = ["MLP", "batch", "method", "library", "time ms", "NFE", "steps", "bare f µs", "ratio", "ratio (medians)",
              "ratio (min)", "overhead µs/step", "rounds"]
    rows = []
    for r in data["mlp"]:
        rows.append([r["size"], r["batch"], r["method"], r["lib"], fmt(r["time_ms"]), r["nfe"], r["steps"],
                     fmt(r["bare_f_us"]), f"**{r['overhead_ratio']:.2f}**" if r["lib"] == "odeserve" else f"{r['overhead_ratio']:.2f}",
                     f"{r['overhead_ratio_of_medians']:.2f}", f"{r['overhead_ratio_min']:.2f}",
                     fmt(r["per_step_overhead_us"]), r["rounds"]])
    lines.append(md_table(header, rows, "lrllrrrrrrrrr"))
    lines.append("\n\"overhead µs/step\" = (time − NFE × bare f) / steps: what the solver itself costs per step "
                 "(setup amortised in).\n")
    if data.get("vdp"):
        v = data["vdp"]
        lines.append(f"\n## (b) Van der Pol, mixed stiffness, {v['batch']} samples, {v['dtype']}\n\n")
        lines.append(
            f"x'' − μ(1 − x²)x' + x = 0 as (x, v, μ) with μ' = 0, μ = linspace({VDP['mu_lo']}, {VDP['mu_hi']}), "
            f"y0 = (2, 0), t ∈ [{VDP['t0']:g}, {VDP['t1']:g}] (μ = 0.5 needs ~50 accepted steps, μ = 5 ~90–130: "
            f"the stiffer samples need 2–2.5× more steps); dopri5 rtol {RTOL:g}, atol {ATOL:g}.\n\n"
            "- batched calls: calls of f (each on all rows still in the batch; odeserve drops finished rows, "
            "torchode keeps all rows, torchdiffeq steps the whole batch jointly).\n"
            "- per-sample evals: Σ over calls of the rows f saw (= batched calls × batch for torchode and torchdiffeq).\n"
            "- useful = 6 × Σ_samples accepted steps / per-sample evals: the share of per-sample evaluations that "
            "advanced a running sample (dopri5 with FSAL costs 6 evaluations per attempted step; rejected steps, "
            "rows already finished and the 2 initial evaluations per sample are the waste). odeserve: its "
            "`stats['useful_evals']` (the same formula; the column 'useful (recomputed)' counts rows f really saw, "
            "minus `solve()`'s one validation call). torchode: 6 × Σ `n_accepted` / (`n_f_evals` × batch). "
            "torchdiffeq (joint): every accepted step advances all samples: 6 × accepted / calls.\n\n"
        )
        header = ["library", "batched calls", "per-sample evals", "useful", "useful (recomputed)", "accepted (Σ)",
                  "rejected (Σ)", "max steps/sample", "time ms", "µs / batched call"]
        has_err = any("max_abs_err_vs_scipy" in r for r in v["libs"].values())
        if has_err:
            header.append("max |err| vs scipy")
        rows = []
        for lib, r in v["libs"].items():
            row = [lib, r["batched_calls"], r["per_sample_evals"],
                   f"{100 * r.get('useful_reported', r['useful']):.1f}%", f"{100 * r['useful']:.1f}%",
                   r["accepted_sum"], r["rejected_sum"], r["steps_max"], fmt(r.get("time_ms")),
                   fmt(r.get("us_per_batched_call"))]
            if has_err:
                row.append(f"{r.get('max_abs_err_vs_scipy', float('nan')):.1e}")
            rows.append(row)
        lines.append(md_table(header, rows))
        if data.get("vdp_float64"):
            v64 = data["vdp_float64"]["libs"]
            lines.append("\nSame problem in float64 (counts only): " + "; ".join(
                f"{lib} {r['batched_calls']} calls, useful {100 * r['useful']:.1f}%" for lib, r in v64.items()) + ".\n")
    lines.append("\n## Targets\n\n")
    header = ["target", "odeserve", "met?", "peers measured here", "peers (given)"]
    rows = []
    for t in data["targets"]:
        val = t["value"]
        if isinstance(val, float) and val < 1.0 and "useful" in t["target"]:
            sval = f"{100 * val:.1f}%"
            peers = ", ".join(f"{100 * p:.1f}%" for p in t["peers_measured_here"])
        elif isinstance(val, float):
            sval = f"{val:.2f}" + (f" (of medians {t['value_of_medians']:.2f}, min-based {t['value_min_based']:.2f})"
                                   if "value_min_based" in t else "")
            peers = ", ".join(f"{p:.2f}" for p in t["peers_measured_here"])
        else:
            sval, peers = str(val), ", ".join(map(str, t["peers_measured_here"]))
        rows.append([t["target"], sval, "met" if t["met"] else "**missed**", peers, t["peers_given"]])
    lines.append(md_table(header, rows, "lrlll"))
    if cfg["quick"]:
        lines.append("\n(--quick: a smoke subset with few rounds; targets only where the subset covers them.)\n")
    return "".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny subset, few rounds (< 60 s), writes core_quick.*")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 15, quick 3)")
    ap.add_argument("--max-seconds", type=float, default=None, help="cap on timed seconds per case (default 60)")
    ap.add_argument("--no-vdp", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    _quiet_torchdiffeq()
    t_start = time.perf_counter()
    quick = args.quick
    repeats = args.repeats or (3 if quick else 15)
    max_seconds = args.max_seconds or (4.0 if quick else 60.0)
    if quick:
        cases = [("2/64", 1, "dopri5"), ("2/64", 1, "rk4"), ("64/256", 32, "dopri5")]
    else:
        cases = [(s, b, m) for s in MLP_SIZES for b in (1, 32, 512) for m in ("dopri5", "rk4")]

    env = environment()
    mlp_rows: list[dict[str, Any]] = []
    for size, batch, method in cases:
        t = time.perf_counter()
        rows = mlp_case(size, batch, method, repeats, max_seconds)
        mlp_rows += rows
        msg = "  ".join(f"{r['lib']} {r['time_ms']:.2f} ms nfe {r['nfe']} ratio {r['overhead_ratio']:.2f}" for r in rows)
        print(f"[{size} b{batch} {method}] {msg}  (bare f {rows[0]['bare_f_us']:.1f} µs; {time.perf_counter() - t:.0f} s)",
              flush=True)

    vdp = vdp64 = None
    if not args.no_vdp:
        t = time.perf_counter()
        vdp = vdp_case(2 if quick else max(3, repeats // 2), max_seconds, 32 if quick else VDP["batch"], torch.float32,
                       reference=not quick)
        if not quick:
            vdp64 = vdp_case(0, 0, VDP["batch"], torch.float64, timed=False)
        print("[vdp] " + "  ".join(f"{lib} calls {r['batched_calls']} useful {100 * r['useful']:.1f}% "
                                   f"{r.get('time_ms', float('nan')):.0f} ms" for lib, r in vdp["libs"].items())
              + f"  ({time.perf_counter() - t:.0f} s)", flush=True)

    data = {
        "env": env,
        "config": {"quick": quick, "repeats": repeats, "max_seconds_per_case": max_seconds, "rtol": RTOL, "atol": ATOL,
                   "rk4_steps": RK4_STEPS, "vdp": VDP, "clock": "thread CPU time (medians)",
                   "elapsed_s": None},
        "mlp": mlp_rows,
        "vdp": vdp,
        "vdp_float64": vdp64,
    }
    data["targets"] = evaluate_targets(mlp_rows, vdp if not quick else None)
    data["config"]["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    stem = "core_quick" if quick else "core"
    write_json(f"{stem}.json", data)
    p = write_text(f"{stem}.md", render_md(data))
    print(f"wrote {p} and {stem}.json in {data['config']['elapsed_s']} s")
    for t in data["targets"]:
        print(("MET    " if t["met"] else "MISSED ") + t["target"] + f": {t['value']}")


if __name__ == "__main__":
    main()
