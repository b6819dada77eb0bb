"""Does fusing bias and ``tanh`` into the matrix product pay at case (c)?  (A probe for the
README's performance section; nothing here ships.)

Case (c) of bench_latency.py spends most of its time in the hidden layer
``tanh(x @ W^T + b)`` at x 512 × 256, W 256 × 256.  The AOTInductor package runs it as MKL's
``addmm`` (the bias copied into the output first, then MKL packs both operands) followed by
Inductor's fused rational-``tanh`` kernel: three passes over the 512 × 256 output.  XLA runs a
6 × 16 FMA microkernel with almost no packing.  This probe times, round robin on one pinned
core (process CPU clock, medians, ratios paired with MKL's bare product timed just before):

* ``MKL mm``: the bare product into a preallocated output (the floor of the layer);
* ``MKL addmm + tanh (Inductor)``: what the package runs, compiled by Inductor with odeserve's
  options and rational ``tanh`` (one Python call per layer: ~10–20 µs of the time);
* ``fused kernel``: bench/fused_linear_tanh.cpp, a hand-written AVX2 6 × 16 kernel with the
  bias in the accumulators and the rational ``tanh`` on the finished tile (W packed once),
  built with ``g++ -O3 -march=native``.

Run: ``python bench/fused_probe.py [--rounds N]``; writes bench/results/fused_probe.json/.md.
"""

from __future__ import annotations

import argparse
import ctypes
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import environment, fmt, md_table, time_alternating, write_json, write_text  # noqa: E402

M, K, N = 512, 256, 256


def build(tmp: Path) -> ctypes.CDLL:
    so = tmp / "fused.so"
    src = Path(__file__).with_name("fused_linear_tanh.cpp")
    subprocess.run(["g++", "-O3", "-march=native", "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    return ctypes.CDLL(str(so))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import diffrax_peer  # noqa: PLC0415  (pinning helper only)

    core = diffrax_peer.pin_to_one_cpu()
    from odeserve.export.compile import _inference_options, inductor_backend

    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, K, generator=g)
    w = torch.randn(N, K, generator=g) / K**0.5
    b = 0.1 * torch.randn(N, generator=g)
    out_mm, out_fused = torch.empty(M, N), torch.empty(M, N)
    wt = w.t()
    layer = torch.compile(lambda x: torch.tanh(torch.addmm(b, x, wt)), fullgraph=True,
                          backend=inductor_backend({**_inference_options(), "cpp.threads": 1}, fast_tanh=True))
    with torch.no_grad(), tempfile.TemporaryDirectory() as tmp:
        lib = build(Path(tmp))
        buf = torch.empty(N * K + 8)
        packed = buf[(-buf.data_ptr() // 4) % 8:][: N * K]  # 32-byte aligned panels
        ptr = lambda t: ctypes.c_void_p(t.data_ptr())  # noqa: E731
        lib.pack(ptr(w), N, K, ptr(packed))

        def fused() -> torch.Tensor:
            lib.linear_act(ptr(x), M, K, ptr(packed), N, ptr(b), ptr(out_fused), 1)
            return out_fused

        want = torch.tanh(torch.addmm(b.double(), x.double(), wt.double()))
        err = {"fused kernel": float((fused().double() - want).abs().max()),
               "MKL addmm + tanh (Inductor)": float((layer(x).double() - want).abs().max())}
        fns = {"MKL mm": lambda: torch.mm(x, wt, out=out_mm), "MKL addmm + tanh (Inductor)": lambda: layer(x),
               "fused kernel": fused}
        res = time_alternating(fns, repeats=args.rounds, warmup=3, inner={n: 20 for n in fns},
                               clock="process", reference="MKL mm")
    flops = 2 * M * N * K
    rows = []
    for name, r in res.items():
        ratio = 1.0 if name == "MKL mm" else r["median_ratio_to_ref"]
        rows.append([name, fmt(r["median_s"] * 1e6), fmt(ratio), fmt(flops / r["median_s"] / 1e9),
                     "–" if name == "MKL mm" else f"{err[name]:.1e}"])
    env = environment()
    text = (
        "# Fused bias + tanh in the product? (bench/fused_probe.py)\n\n"
        f"torch {torch.__version__}; one thread pinned to core {core}; {env['time']}; load average "
        f"{tuple(round(v, 2) for v in env.get('load_avg', ()))}.  Layer tanh(x @ W^T + b), x {M} × {K}, "
        f"W {N} × {K}, float32 (case (c)'s hidden layer).  Medians of 20-call samples, round robin, "
        "process CPU clock; × MKL mm: median of ratios paired with the bare product timed just before.\n\n"
        + md_table(["contender", "median µs", "× MKL mm", "GFLOP/s", "max |err| vs float64"], rows) + "\n"
    )
    write_json("fused_probe.json", {"env": env, "results": res, "max_abs_err": err})
    print(text)
    write_text("fused_probe.md", text)


if __name__ == "__main__":
    main()
