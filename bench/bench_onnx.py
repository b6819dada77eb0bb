"""ONNX export and ONNX Runtime inference, measured.

1. Export time and file size vs step count (10, 100, 1000) for ``mode="unrolled"`` and
   ``mode="loop"`` (RK4, MLP 2/64, float32).  Unrolled 1000 steps runs only with ``--full``
   (about 11 minutes on this machine class, see /work/shared/EXPORT_FACTS.md).
2. Latency at batch 1 and 256 with 1 and 2 threads: ORT (loop file) vs PyTorch eager
   odeserve, compiled odeserve (``compile_solve``, inductor) and eager torchdiffeq, for
   RK4 100 steps and dopri5 rtol 1e-5 — plus the floor: NFE bare evaluations of f in ORT,
   (a) as one ``Loop`` graph (the same runtime machinery minus the solver's arithmetic) and
   (b) as NFE separate ``session.run`` calls of an f-only graph.

Targets (from the issue): loop export of RK4 1000 steps ≤ 15 s with size independent of the
step count; ORT batch-1 latency ≥ 5× faster than torchdiffeq eager (RK4 100 steps); ORT
overhead vs its own floor ≤ 1.5.

Run: ``python bench/bench_onnx.py [--quick] [--full]``; writes bench/results/onnx.json/.md.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, fmt, make_mlp, md_table, mlp_y0, time_alternating, write_json, write_text  # noqa: E402

import odeserve  # noqa: E402
from odeserve.export import OnnxModel, compile_solve, to_onnx  # noqa: E402

warnings.filterwarnings("ignore")
DIM, HIDDEN = 2, 64
RTOL, ATOL = 1e-5, 1e-7


# --------------------------------------------------------------------------- 1. export cost


def export_cost(tmp: Path, steps_list: list[int], full: bool) -> list[dict[str, Any]]:
    # One torch thread: on a shared 2-core machine two OpenMP threads make the parity gate's
    # small eager solves up to 10x slower (spinning on a busy core).
    torch.set_num_threads(1)
    f = make_mlp(DIM, HIDDEN)
    y0 = mlp_y0(8, DIM)
    rows = []
    for mode in ("loop", "unrolled"):
        for steps in steps_list:
            if mode == "unrolled" and steps >= 1000 and not full:
                rows.append({"mode": mode, "steps": steps, "skipped": "needs --full (EXPORT_FACTS: 684 s, 11.5 MB)"})
                continue
            path = tmp / f"rk4-{mode}-{steps}.onnx"
            t = time.perf_counter()
            r = to_onnx(f, y0, path, solver="rk4", steps=steps, mode=mode)
            total = time.perf_counter() - t
            rows.append({"mode": mode, "steps": steps, "export_s": r.export_seconds, "total_s": total,
                         "size_bytes": r.size_bytes, "nodes": _nodes(path), "parity": max(r.parity.values()),
                         "path": str(path)})
            print(f"export {mode:8s} {steps:5d} steps: {r.export_seconds:6.1f} s (with parity gate {total:6.1f} s), "
                  f"{r.size_bytes / 1024:8.1f} KiB, parity {max(r.parity.values()):.2g}", flush=True)
    return rows


def _nodes(path: Path) -> int:
    """ONNX nodes, Loop bodies included."""
    import onnx

    def count(g: Any) -> int:
        return sum(1 + sum(count(a.g) for a in n.attribute if a.HasField("g")) for n in g.node)

    return count(onnx.load(str(path)).graph)


# --------------------------------------------------------------------------- 2. latency


def _ort_session(model_bytes: bytes, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def bare_f_model(f: torch.nn.Module) -> bytes:
    """f(t, y) alone, per-sample t, as an ONNX graph (TorchScript exporter)."""

    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = f

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.f(t, y)

    buf = io.BytesIO()
    y = mlp_y0(4, DIM)
    torch.onnx.export(Bare(), (torch.zeros(4), y), buf, dynamo=False, input_names=["t", "y"], output_names=["f"],
                      dynamic_axes={"t": {0: "b"}, "y": {0: "b"}, "f": {0: "b"}}, opset_version=20)
    return buf.getvalue()


def loop_floor_model(f: torch.nn.Module, tmp: Path) -> bytes:
    """``n`` evaluations of f in one ONNX Loop (n an input): f's cost in the same runtime
    machinery as the solve, without the solver's arithmetic."""

    class Floor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = f

        def forward(self, y: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            t = torch.zeros_like(y[:, 0])

            def cond(i: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
                return i < n

            def body(i: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                # z + 0·f keeps every evaluation live while the state stays bounded
                return i + 1, torch.tanh(z + self.f(t, z))

            return torch.while_loop(cond, body, (torch.zeros((), dtype=torch.int64), y))[1]

    y = mlp_y0(4, DIM)
    prog = torch.onnx.export(Floor(), (y, torch.tensor(3)), dynamo=True, input_names=["y", "n"], output_names=["out"],
                             dynamic_shapes=({0: torch.export.Dim("batch")}, None), external_data=False,
                             optimize=False, verbose=False)
    return prog.model_proto.SerializeToString()


def latency(tmp: Path, rk4_path: Path, batches: list[int], threads_list: list[int], repeats: int,
            max_seconds: float) -> list[dict[str, Any]]:
    from torchdiffeq import odeint

    f = make_mlp(DIM, HIDDEN)
    t = time.perf_counter()
    dopri = to_onnx(f, mlp_y0(8, DIM), tmp / "dopri5-loop.onnx", solver="dopri5", rtol=RTOL, atol=ATOL, mode="loop")
    print(f"dopri5 loop export {time.perf_counter() - t:.1f} s", flush=True)
    bare = bare_f_model(f)
    floor = loop_floor_model(f, tmp)
    problems = {
        "rk4 100 steps": (rk4_path, dict(solver="rk4", steps=100), dict(method="rk4", options=dict(step_size=0.01))),
        "dopri5 rtol 1e-5": (dopri.path, dict(solver="dopri5", rtol=RTOL, atol=ATOL),
                             dict(method="dopri5", rtol=RTOL, atol=ATOL)),
    }
    compiled: dict[str, Any] = {}
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        for prob, (path, opts, tdq) in problems.items():
            for batch in batches:
                y = mlp_y0(batch, DIM)
                yn = y.numpy()
                tt = torch.tensor([0.0, 1.0])
                model = OnnxModel(path, providers=["CPUExecutionProvider"], threads=threads)
                out = model.run(yn)
                nfe_ort = int(out["n_steps"].max()) * 6 + 2 if "n_steps" in out else 400
                if prob not in compiled:
                    c = compile_solve(f, t0=0.0, t1=1.0, batch="per_sample", **opts)
                    t0 = time.perf_counter()
                    with torch.no_grad():  # inference, as timed below
                        c(y)
                    print(f"compile_solve {prob} batch {batch}: {time.perf_counter() - t0:.1f} s", flush=True)
                    compiled[prob] = c
                comp = compiled[prob]
                with torch.no_grad():
                    comp(y)  # a new batch size may compile once more
                sol = odeserve.solve(f, y, tt, batch="per_sample", **opts)
                s_bare = _ort_session(bare, threads)
                s_floor = _ort_session(floor, threads)
                tz = np.zeros(batch, np.float32)
                n_in = np.asarray(nfe_ort, np.int64)

                def bare_nfe(s: Any = s_bare, n: int = nfe_ort) -> None:
                    for _ in range(n):
                        s.run(None, {"t": tz, "y": yn})

                fns: dict[str, Callable[[], Any]] = {
                    "ORT": lambda m=model: m.run(yn),
                    "floor: Loop of NFE f": lambda s=s_floor: s.run(None, {"y": yn, "n": n_in}),
                    "floor: NFE f calls": bare_nfe,
                    "odeserve eager": lambda: odeserve.solve(f, y, tt, batch="per_sample", **opts),
                    "odeserve compiled": lambda c=comp: c(y),
                    "torchdiffeq eager": lambda: odeint(f, y, tt, **tdq),
                }
                # One thread: everything runs on this thread, whose CPU clock leaves out the time
                # a shared machine kept it waiting.  Two threads: ORT's second thread is not on
                # this thread's clock, so wall time.
                clock = "cpu" if threads == 1 else "wall"
                with torch.no_grad():
                    res = time_alternating(fns, repeats=repeats, warmup=1, max_seconds=max_seconds, clock=clock)
                row = {"problem": prob, "batch": batch, "threads": threads, "clock": clock, "nfe_ort": nfe_ort,
                       "nfe_odeserve_eager": int(sol.stats["nfe"]),
                       **{k: v["median_s"] * 1e3 for k, v in res.items()}}
                row["ORT vs torchdiffeq"] = row["torchdiffeq eager"] / row["ORT"]
                row["ORT / Loop floor"] = row["ORT"] / row["floor: Loop of NFE f"]
                row["ORT / NFE-call floor"] = row["ORT"] / row["floor: NFE f calls"]
                rows.append(row)
                print(f"{prob:17s} batch {batch:3d} threads {threads}: " + ", ".join(
                    f"{k} {row[k]:.2f}" for k in fns) + f" ms; ×{row['ORT vs torchdiffeq']:.1f} vs torchdiffeq, "
                    f"ORT/floor {row['ORT / Loop floor']:.2f}", flush=True)
    return rows


# --------------------------------------------------------------------------- report


def report(export_rows: list[dict[str, Any]], lat_rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    out = ["# ONNX export and ONNX Runtime (bench/bench_onnx.py)\n",
           f"torch {env['torch']}, {env['cpus']} CPUs (shared; load average {env.get('load_avg', '?')}), "
           f"{env['time']}.  MLP 2/64 (time-concat, tanh), float32.  Latency: medians, round robin; 1 thread "
           "on the thread CPU clock, 2 threads on the wall clock.  ORT runs the `mode=\"loop\"` file; odeserve "
           "eager/compiled run `batch=\"per_sample\"` like the export; torchdiffeq steps the batch jointly.\n",
           "## Export time and file size (RK4)\n"]
    rows = []
    for r in export_rows:
        if "skipped" in r:
            rows.append([r["mode"], r["steps"], "–", "–", "–", "–", r["skipped"]])
        else:
            rows.append([r["mode"], r["steps"], fmt(r["export_s"]), fmt(r["total_s"]), f"{r['size_bytes'] / 1024:.1f}",
                         r["nodes"], f"{r['parity']:.1g}"])
    out.append(md_table(["mode", "steps", "export s", "with parity gate s", "size KiB", "nodes", "parity error"],
                        rows))
    out.append("\n## Latency, ms (median)\n")
    cols = ["ORT", "floor: Loop of NFE f", "floor: NFE f calls", "odeserve eager", "odeserve compiled",
            "torchdiffeq eager"]
    rows = [[r["problem"], r["batch"], r["threads"], r["nfe_ort"]] + [fmt(r[c]) for c in cols]
            + [fmt(r["ORT vs torchdiffeq"], 2), fmt(r["ORT / Loop floor"], 2)] for r in lat_rows]
    out.append(md_table(["problem", "batch", "threads", "NFE"] + cols + ["torchdiffeq / ORT", "ORT / Loop floor"],
                        rows))
    out.append("\n## Targets\n")
    out.append(md_table(["target", "measured", "met"], targets(export_rows, lat_rows), "llc"))
    out.append(NOTES)
    return "\n".join(out)


NOTES = """
## Notes on the misses

* **Loop export time.**  Trace + conversion takes the same time for 10, 100 or 1000 steps (the
  graph is the same: one `Loop`, the same node count); it varies with the machine's load (4.5 s
  on a quiet machine, 10–17 s at load 3–5 on this shared 2-core box).  The file grows only by
  the grid's data (N + 1 step times: 8 bytes per step).
* **ORT vs its floor.**  The floor is the same number of f evaluations in one ORT `Loop`.  ORT
  pays ≈ 1 µs per node whatever the node does, so at batch 1 the count of non-f nodes per step
  decides.  RK4 (82 nodes in the whole graph since the per-evaluation `t` broadcast, the
  `Mul`-by-1 and, without interior output times, the output-buffer write were removed; 111
  before) is now within 1.3 of its floor with one thread.  Dopri5's per-sample step control
  (error norm, controller, accept/reject masks, status: ≈ 200 nodes per attempted step against
  6 × 6 nodes of f) still costs more than six evaluations of this small f, at any batch size; a
  larger f moves it towards 1.
* **Two threads.**  The machine has two cores shared with other jobs: two OpenMP threads in
  torch spin against them (eager and compiled torch at batch 256 take seconds), so the
  2-thread rows say more about the machine than about the runtimes.
* **Dopri5 at batch 256 vs torchdiffeq.**  ORT solves per sample (each row its own steps and
  accept/reject); torchdiffeq steps the batch jointly with one step size, fewer operations per
  step for the same NFE here.
"""


def targets(export_rows: list[dict[str, Any]], lat_rows: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    loop = {r["steps"]: r for r in export_rows if r["mode"] == "loop" and "skipped" not in r}
    if 1000 in loop:
        r, r10 = loop[1000], loop[min(loop)]
        rows.append(["loop export, RK4 1000 steps ≤ 15 s", f"{r['export_s']:.1f} s", "yes" if r["export_s"] <= 15 else "no"])
        rows.append(["loop file size independent of steps",
                     f"{r10['size_bytes'] / 1024:.1f} → {r['size_bytes'] / 1024:.1f} KiB, {r10['nodes']} → {r['nodes']} nodes "
                     f"({min(loop)} → 1000 steps)", "yes" if r["nodes"] == r10["nodes"] else "no"])
    for r in lat_rows:
        if r["problem"].startswith("rk4") and r["batch"] == 1:
            x = r["ORT vs torchdiffeq"]
            rows.append([f"ORT batch 1 ≥ 5× torchdiffeq eager, RK4 100 ({r['threads']} thread(s))", f"{x:.1f}×",
                         "yes" if x >= 5 else "no"])
    for r in lat_rows:
        x = r["ORT / Loop floor"]
        rows.append([f"ORT / floor ≤ 1.5: {r['problem']}, batch {r['batch']}, {r['threads']} thread(s)", f"{x:.2f}",
                     "yes" if x <= 1.5 else "no"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", action="store_true", help="also export unrolled RK4 with 1000 steps (~11 min)")
    ap.add_argument("--quick", action="store_true", help="steps 10/100 only, fewer repeats")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--skip-export", action="store_true")
    args = ap.parse_args()
    env = environment()
    tmp = Path(tempfile.mkdtemp(prefix="odeserve-bench-onnx-"))
    steps = [10, 100] if args.quick else [10, 100, 1000]
    if args.skip_export:  # latency only: reuse the last export table, export the one file needed
        import json

        from common import RESULTS

        export_rows = json.loads((RESULTS / "onnx.json").read_text())["export"]
        torch.set_num_threads(1)
        rk4_100 = tmp / "rk4-loop-100.onnx"
        to_onnx(make_mlp(DIM, HIDDEN), mlp_y0(8, DIM), rk4_100, solver="rk4", steps=100, mode="loop")
    else:
        export_rows = export_cost(tmp, steps, args.full)
        rk4_100 = next(Path(r["path"]) for r in export_rows if r.get("mode") == "loop" and r["steps"] == 100)
    lat_rows = latency(tmp, rk4_100, [1, 256], [1, 2], 5 if args.quick else args.repeats, 20.0)
    data = {"environment": env, "export": export_rows, "latency": lat_rows}
    write_json("onnx.json", data)
    write_text("onnx.md", report(export_rows, lat_rows, env))
    print(report(export_rows, lat_rows, env))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
