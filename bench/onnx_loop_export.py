"""Loop export time and size vs step count (RK4, MLP 2/64, float32), on its own.

The export part of ``bench_onnx.py`` without the latency part: ``to_onnx(mode="loop")`` for
10, 100 and 1000 steps, twice each, one torch thread.  ``export_s`` is the exporter's own
time (trace + conversion + optimisation), ``total_s`` adds the parity gate.

Run: ``python bench/onnx_loop_export.py``; writes bench/results/onnx_loop_export.json/.md.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_onnx import _nodes  # noqa: E402
from common import environment, make_mlp, md_table, mlp_y0, write_json, write_text  # noqa: E402

from odeserve.export import to_onnx  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    f, y0 = make_mlp(2, 64), mlp_y0(8, 2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (10, 100, 1000):
            for rep in range(2):
                path = Path(tmp) / f"rk4-{steps}-{rep}.onnx"
                t = time.perf_counter()
                r = to_onnx(f, y0, path, solver="rk4", steps=steps, mode="loop")
                rows.append({"steps": steps, "export_s": r.export_seconds, "total_s": time.perf_counter() - t,
                             "nodes": _nodes(path), "size_kib": r.size_bytes / 1024})
                print(rows[-1], flush=True)
    env = environment()
    write_json("onnx_loop_export.json", {"env": env, "rows": rows})
    table = md_table(["steps", "export s", "with parity gate s", "nodes", "KiB"],
                     [[r["steps"], f"{r['export_s']:.1f}", f"{r['total_s']:.1f}", r["nodes"], f"{r['size_kib']:.1f}"]
                      for r in rows], "rrrrr")
    head = (f"torch {env.get('torch')}, load average at the end {env.get('load_avg', '?')}, "
            f"{env.get('cpus')} CPUs (shared); one torch thread.")
    write_text("onnx_loop_export.md", f"# ONNX loop export vs steps (RK4, MLP 2/64)\n\n{head}\n\n{table}\n")


if __name__ == "__main__":
    main()
