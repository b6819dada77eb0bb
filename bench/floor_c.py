"""Case (c) of bench_latency.py against its floor: how much of a dopri5 solve at batch 512
(MLP 64/256, rtol 1e-5, atol 1e-7, one thread) is the matrix products alone.

Round robin in one process, diffrax timed right before every other contender (paired
ratios, as in bench_latency.py), process CPU clock (XLA runs on a thread of its own):

* diffrax (``jax.jit``; I controller, 5 steps);
* the AOTInductor package odeserve writes for it (``to_aoti(batch="joint",
  controller="i")``, 5 steps, as bench_latency.py's best path);
* the **product floor**: the solve's 32 evaluations of f as their three matrix products
  each and nothing else (``torch.mm`` / ``torch.addmm`` into preallocated outputs, MKL,
  weights and shapes of the model) — no bias pass (``mm``) or with it (``addmm``);
* the same 32 × 3 products through numpy (OpenBLAS), for a second BLAS.

If the floor is most of diffrax's whole solve, the rest of either solve (activations, stage
sums, error norm, controller, allocation) decides the contest, and a faster odeserve loop
can only gain that share.

Run: ``python bench/floor_c.py [--rounds N]``; writes bench/results/latency_floor_c.json/.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS on one thread, like the rest

import diffrax_peer  # noqa: E402  (first: configures XLA)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import environment, fmt, make_mlp, md_table, mlp_y0, time_alternating, write_json, write_text  # noqa: E402

warnings.filterwarnings("ignore")

DIM, HIDDEN, BATCH = 64, 256, 512
OPTIONS = dict(solver="dopri5", rtol=1e-5, atol=1e-7, controller="i")
EVALS = 32  # f(t0, y0), the initial-step probe, 5 steps × 6 new stages (FSAL)


def product_floor(f: torch.nn.Module) -> dict[str, object]:
    """``EVALS`` evaluations' matrix products, MKL (torch) and OpenBLAS (numpy)."""
    (w1, b1), (w2, b2), (w3, b3) = ((m.weight, m.bias) for m in (f.l1, f.l2, f.l3))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, DIM + 1, generator=g)  # [y, t]: the time-concat input
    h = torch.randn(BATCH, HIDDEN, generator=g)
    o1, o2, o3 = torch.empty(BATCH, HIDDEN), torch.empty(BATCH, HIDDEN), torch.empty(BATCH, DIM)
    w1t, w2t, w3t = w1.t(), w2.t(), w3.t()

    def mm() -> None:
        for _ in range(EVALS):
            torch.mm(x, w1t, out=o1)
            torch.mm(h, w2t, out=o2)
            torch.mm(h, w3t, out=o3)

    def addmm() -> None:
        for _ in range(EVALS):
            torch.addmm(b1, x, w1t, out=o1)
            torch.addmm(b2, h, w2t, out=o2)
            torch.addmm(b3, h, w3t, out=o3)

    xn, hn = x.numpy(), h.numpy()
    w1n, w2n, w3n = (np.ascontiguousarray(w.numpy().T) for w in (w1, w2, w3))
    p1, p2, p3 = o1.numpy().copy(), o2.numpy().copy(), o3.numpy().copy()

    def numpy_mm() -> None:
        for _ in range(EVALS):
            np.matmul(xn, w1n, out=p1)
            np.matmul(hn, w2n, out=p2)
            np.matmul(hn, w3n, out=p3)

    return {"products (MKL mm)": mm, "products (MKL addmm)": addmm, "products (numpy, OpenBLAS)": numpy_mm}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    core = diffrax_peer.pin_to_one_cpu()
    f = make_mlp(DIM, HIDDEN)
    y0 = mlp_y0(BATCH, DIM)

    solve = diffrax_peer.diffrax_solve(diffrax_peer.jax_mlp(f), **OPTIONS)
    yj = jnp.asarray(y0.numpy())
    solve.compile(yj)
    steps = solve.solve(yj)[1]["steps"]
    fns = {"diffrax": lambda: solve(yj)}

    from odeserve.export import load_aoti, to_aoti

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.pt2"
        t = time.perf_counter()
        to_aoti(f, mlp_y0(8, DIM), path, dynamic_batch=True, progress=False, batch="joint", **OPTIONS)
        build_s = time.perf_counter() - t
        package = load_aoti(path)
        aoti_steps = int(package(y0)[-1].max())
        fns["AOTI joint + I"] = lambda: package(y0)
        fns.update(product_floor(f))
        res = time_alternating(fns, repeats=args.rounds, warmup=2, max_seconds=args.max_seconds,
                               clock="process", reference="diffrax")

    flops = EVALS * 2 * BATCH * ((DIM + 1) * HIDDEN + HIDDEN * HIDDEN + HIDDEN * DIM)
    rows = []
    for name, r in res.items():
        ratio = 1.0 if name == "diffrax" else r["median_ratio_to_ref"]
        rows.append([name, fmt(r["median_s"] * 1e3), fmt(ratio),
                     fmt(flops / r["median_s"] / 1e9) if name.startswith("products") else "–"])
    env = environment()
    jax_versions = diffrax_peer.versions()
    text = (
        "# Case (c) against its floor (bench/floor_c.py)\n\n"
        f"torch {torch.__version__}, jax {jax_versions['jax']}, diffrax {jax_versions['diffrax']}; one thread, pinned to core {core}; "
        f"{env['time']}; load average {tuple(round(x, 2) for x in env.get('load_avg', ()))}.  dopri5 rtol 1e-5 atol 1e-7, "
        f"MLP {DIM}/{HIDDEN}, batch {BATCH}: diffrax {steps} steps, the AOTI package {aoti_steps} "
        f"(built in {build_s:.0f} s).  Products: {EVALS} evaluations × 3 products, "
        f"{flops / 1e9:.2f} GFLOP.  Medians over round-robin rounds on the process CPU clock; "
        "× diffrax: the median of paired ratios (diffrax timed right before each sample).\n\n"
        + md_table(["contender", "median ms", "× diffrax", "GFLOP/s"], rows) + "\n"
    )
    write_json("latency_floor_c.json", {"env": env, "steps": {"diffrax": steps, "aoti": aoti_steps},
                                        "flops": flops, "results": res})
    print(text)
    write_text("latency_floor_c.md", text)


if __name__ == "__main__":
    main()
