"""One model, every deployment format: latency and the cost of making each artifact.

The time-concat MLP of ``common.py`` (2/64, float32, t ∈ [0, 1]) solved per sample with
RK4 (100 steps) and dopri5 (rtol 1e-5, atol 1e-7) at batch 1 and 256, one thread, by:

- ``eager``: ``odeserve.solve`` (the Python loop), as a user calls it;
- ``compiled``: ``odeserve.export.compile_solve`` (Inductor, the whole solve one graph);
- ``TorchScript``: ``odeserve.export.to_torchscript`` loaded with ``torch.jit.load`` (RK4
  unrolled, dopri5 a scripted loop over a traced step);
- ``exported program``: ``to_exported_program`` loaded with ``torch.export.load(...).module()``
  (its ``torch.while_loop`` runs eagerly in Python: the format is for handing to a compiler);
- ``AOTInductor``: ``to_aoti`` loaded with ``load_aoti`` (the loop in compiled C++);
- ``ONNX Runtime``: ``to_onnx`` (``mode="loop"``) run by ``OnnxModel`` (threads=1).

Latency: medians of round-robin rounds (``common.time_alternating``; thread CPU clock, every
runtime on the calling thread), ratios vs eager.  Cost: the exporter's own time (trace /
export / compile), the same with its parity gate, file size, load time, and the first call
(TorchScript's profiling executor and the compiled solve do their work there).  Inductor's
on-disk cache is a fresh directory unless ``--quick``/``--cache``, so compile times are cold.

Usage: python bench/bench_formats.py [--quick] [--no-aoti] [--repeats N] [--cache]
Writes bench/results/formats.json and formats.md (formats_quick.* with --quick; --quick also
skips AOTInductor unless --aoti, since its compiles take minutes).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")  # also the OpenMP of AOTInductor's compiled code
from cold_cache import use_cold_cache  # noqa: E402  (before torch: sets Inductor's cache directory)

COLD = use_cold_cache()

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, fmt, make_mlp, md_table, mlp_y0, time_alternating, write_json, write_text  # noqa: E402

import odeserve  # noqa: E402
from odeserve.export import (  # noqa: E402
    OnnxModel,
    compile_solve,
    load_aoti,
    to_aoti,
    to_exported_program,
    to_onnx,
    to_torchscript,
)

warnings.filterwarnings("ignore")
DIM, HIDDEN = 2, 64
RTOL, ATOL = 1e-5, 1e-7
PROBLEMS: dict[str, dict[str, Any]] = {
    "rk4 100 steps": dict(solver="rk4", steps=100),
    "dopri5 rtol 1e-5": dict(solver="dopri5", rtol=RTOL, atol=ATOL),
}
FORMATS = ("eager", "compiled", "TorchScript", "exported program", "AOTInductor", "ONNX Runtime")
BATCHES = (1, 256)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def build(problem: str, opts: dict[str, Any], f: torch.nn.Module, tmp: Path, aoti: bool
          ) -> tuple[dict[str, Callable[[torch.Tensor], Any]], list[dict[str, Any]]]:
    """Every format's runner for ``problem`` and what making it cost."""
    example = mlp_y0(8, DIM)
    runners: dict[str, Callable[[torch.Tensor], Any]] = {
        "eager": lambda y: odeserve.solve(f, y, [0.0, 1.0], batch="per_sample", **opts),
    }
    costs: list[dict[str, Any]] = []
    tag = opts["solver"]

    def record(name: str, result: Any, total_s: float, load: Callable[[], Any]) -> Any:
        model, load_s = _timed(load)
        costs.append({"problem": problem, "format": name, "export_s": result.export_seconds, "total_s": total_s,
                      "size_kib": result.size_bytes / 1024, "load_s": load_s,
                      "parity": max(result.parity.values())})
        print(f"{problem}: {name} exported in {result.export_seconds:.1f} s ({total_s:.1f} s with the parity gate), "
              f"loaded in {load_s:.2f} s", flush=True)
        return model

    r, s = _timed(lambda: to_torchscript(f, example, tmp / f"{tag}.pt", **opts))
    ts = record("TorchScript", r, s, lambda: torch.jit.load(str(r.path)))
    runners["TorchScript"] = lambda y, m=ts: m(y)

    r2, s = _timed(lambda: to_exported_program(f, example, tmp / f"{tag}.pt2", **opts))
    ep = record("exported program", r2, s, lambda: torch.export.load(str(r2.path)).module())
    runners["exported program"] = lambda y, m=ep: m(y)

    if aoti:
        r3, s = _timed(lambda: to_aoti(f, example, tmp / f"{tag}-aoti.pt2", progress=True, **opts))
        ao = record("AOTInductor", r3, s, lambda: load_aoti(r3.path))
        runners["AOTInductor"] = lambda y, m=ao: m(y)

    r4, s = _timed(lambda: to_onnx(f, example, tmp / f"{tag}.onnx", mode="loop", **opts))
    ort = record("ONNX Runtime", r4, s, lambda: OnnxModel(r4.path, providers=["CPUExecutionProvider"], threads=1))
    runners["ONNX Runtime"] = lambda y, m=ort: m.run(y.numpy())

    compiled = compile_solve(f, t0=0.0, t1=1.0, batch="per_sample", **opts)
    runners["compiled"] = lambda y, c=compiled: c(y)
    costs.append({"problem": problem, "format": "compiled", "export_s": None, "total_s": None, "size_kib": None,
                  "load_s": None, "parity": None})
    return runners, costs


def measure(problem: str, runners: dict[str, Callable[[torch.Tensor], Any]], costs: list[dict[str, Any]],
            repeats: int, max_seconds: float) -> list[dict[str, Any]]:
    rows = []
    for batch in BATCHES:
        y = mlp_y0(batch, DIM, seed=batch)
        with torch.no_grad():
            for name, run in runners.items():  # first calls: compiles, profiling runs
                _, first = _timed(lambda run=run: run(y))
                for c in costs:
                    if c["format"] == name:
                        c[f"first_call_b{batch}_s"] = first
            fns = {name: (lambda run=run: run(y)) for name, run in runners.items()}
            res = time_alternating(fns, repeats=repeats, warmup=1, max_seconds=max_seconds, clock="cpu")
        row: dict[str, Any] = {"problem": problem, "batch": batch, **{k: v["median_s"] * 1e3 for k, v in res.items()}}
        for name in runners:
            row[f"{name} speed-up"] = row["eager"] / row[name]
        rows.append(row)
        print(f"{problem} batch {batch}: " + ", ".join(f"{k} {row[k]:.2f}" for k in runners) + " ms", flush=True)
    return rows


def report(cost_rows: list[dict[str, Any]], lat_rows: list[dict[str, Any]], env: dict[str, Any], cold: bool) -> str:
    present = [f for f in FORMATS if any(f in r for r in lat_rows)]
    out = ["# Deployment formats side by side (bench/bench_formats.py)\n",
           f"torch {env['torch']}, {env['cpus']} CPUs (shared; load average {env.get('load_avg', '?')}), "
           f"{env['time']}. "
           "MLP 2/64 (time-concat, tanh), float32, per-sample solves over t ∈ [0, 1], one thread, no_grad. "
           "Latency: medians of round-robin rounds on the thread CPU clock.\n",
           "## Latency, ms (speed-up vs eager)\n"]
    rows = [[r["problem"], r["batch"]] + [f"{fmt(r[f])} ({r[f + ' speed-up']:.1f}×)" for f in present]
            for r in lat_rows]
    out.append(md_table(["problem", "batch"] + present, rows))
    out.append(f"\n## Cost of each artifact ({'cold' if cold else 'warm'} Inductor cache)\n")
    rows = []
    for c in cost_rows:
        first = " / ".join(fmt(c.get(f"first_call_b{b}_s")) for b in BATCHES)
        if c["format"] == "compiled":
            rows.append([c["problem"], c["format"], "–", "–", "–", "–", first, "–"])
            continue
        rows.append([c["problem"], c["format"], fmt(c["export_s"]), fmt(c["total_s"]), fmt(c["size_kib"]),
                     fmt(c["load_s"]), first, f"{c['parity']:.1g}"])
    out.append(md_table(["problem", "format", "export s", "with parity gate s", "size KiB", "load s",
                         "first call s (batch " + " / ".join(map(str, BATCHES)) + ")", "parity error"], rows))
    out.append("\nThe compiled solve has no file: it compiles on its first call per batch-size class (batch 1 "
               "gets its own graph), which is its whole cost.\n")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="5 repeats; no AOTInductor unless --aoti")
    ap.add_argument("--aoti", action="store_true", help="with --quick: include AOTInductor anyway")
    ap.add_argument("--no-aoti", action="store_true", help="skip AOTInductor (its compiles take minutes)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--max-seconds", type=float, default=30.0, help="per configuration")
    ap.add_argument("--cache", action="store_true", help="keep Inductor's on-disk cache (warm compiles)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    aoti = not args.no_aoti and (args.aoti or not args.quick)
    env = environment()
    tmp = Path(tempfile.mkdtemp(prefix="odeserve-bench-formats-"))
    f = make_mlp(DIM, HIDDEN)
    cost_rows: list[dict[str, Any]] = []
    lat_rows: list[dict[str, Any]] = []
    for problem, opts in PROBLEMS.items():
        runners, costs = build(problem, opts, f, tmp, aoti)
        lat_rows += measure(problem, runners, costs, 5 if args.quick else args.repeats, args.max_seconds)
        cost_rows += costs
    name = "formats_quick" if args.quick else "formats"
    write_json(f"{name}.json", {"environment": env, "cold_inductor_cache": COLD, "costs": cost_rows,
                                "latency": lat_rows})
    text = report(cost_rows, lat_rows, env, COLD)
    write_text(f"{name}.md", text)
    print(text)


if __name__ == "__main__":
    main()
