"""Where a batch-1 solve's time goes, per path (issue 9): the profile behind latency.md.

For two batch-1 problems — dopri5 on MLP 2/64 (rtol 1e-5 vs 1e-8: two step counts) and
RK4 on MLP 64/256 (50 vs 100 steps) — every path is timed at both step counts in one round
robin, and the difference gives the **time per step** and the **fixed cost per call**
(``time(n) = fixed + n × per_step``).  Next to it, what a step is made of:

* eager (``odeserve.solve``): ATen operations per step (counted with a dispatch mode), so
  per-step time / ops = the cost of one eager op (dispatch + Python) at this size;
* compiled (``compile_solve``, default options): the generated C++ of the while loop —
  Inductor kernels, ATen fallbacks, buffer allocations and tensor-handle copies per
  iteration; and the fixed cost split into the wrapper, Dynamo's guards and the graph;
* ONNX Runtime (the ``mode="loop"`` export): nodes in the Loop body, and ORT's own
  profile (per-node times summed by op type, and their share of the run);
* diffrax (``jax.jit``): XLA fusions and dots in the optimised HLO.

* AOTInductor (``--aoti``): a batch-1 package per step count, called as a user does
  (``load_aoti``); the same counts from its generated wrapper.

Run: ``python bench/profile_latency.py [--quick] [--aoti]``; writes bench/results/latency_profile.json/.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import diffrax_peer  # noqa: E402  (first: configures XLA)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import environment, fmt, make_mlp, md_table, mlp_y0, time_alternating, write_json, write_text  # noqa: E402

import odeserve  # noqa: E402

warnings.filterwarnings("ignore")

#: problem → (dim, hidden, [solve options at the low and the high step count])
PROBLEMS: dict[str, tuple[int, int, list[dict[str, Any]]]] = {
    "dopri5 MLP 2/64": (2, 64, [dict(solver="dopri5", rtol=1e-5, atol=1e-7),
                                 dict(solver="dopri5", rtol=1e-8, atol=1e-10)]),
    "rk4 MLP 64/256": (64, 256, [dict(solver="rk4", steps=50), dict(solver="rk4", steps=100)]),
}


# --------------------------------------------------------------------------- eager


class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def eager_ops(f: torch.nn.Module, y0: torch.Tensor, opts: dict[str, Any]) -> dict[str, Any]:
    t = torch.tensor([0.0, 1.0])
    with torch.no_grad(), _OpCounter() as c:
        sol = odeserve.solve(f, y0, t, **opts)
    with torch.no_grad(), _OpCounter() as cf:
        f(torch.zeros(()), y0)
    steps = int(sol.stats["steps"])
    return {"ops": sum(c.ops.values()), "steps": steps, "nfe": int(sol.stats["nfe"]),
            "ops_in_f": sum(cf.ops.values()), "top_ops": dict(c.ops.most_common(8))}


# --------------------------------------------------------------------------- compiled


def compiled_code_counts(code: str) -> dict[str, int]:
    """What one iteration of the generated C++ while loop does (cond + body subgraphs)."""
    start = code.find("while (1)")
    if start < 0:
        return {}
    body = code[start:]
    end = body.find("\n    }\n")  # the loop's closing brace at the entry function's indent
    body = body[: end if end > 0 else len(body)]
    return {
        "inductor kernels": len(re.findall(r"^\s+cpp_fused_\w+\(", body, re.M)),
        "ATen fallbacks (aoti_torch_cpu_*)": len(re.findall(r"aoti_torch_cpu_\w+\(", body)),
        "buffer allocations": body.count("aoti_torch_empty_strided("),
        "tensor-handle copies": body.count("aoti_torch_assign_tensors_out("),
        "host reads": body.count("aoti_torch_item_bool("),
    }


def compiled_paths(f: torch.nn.Module, y0: torch.Tensor, opts: dict[str, Any]) -> tuple[dict[str, Callable], dict]:
    from torch._inductor.utils import run_and_get_code

    from odeserve.export import compile_solve

    c = compile_solve(f, t0=0.0, t1=1.0, **opts)
    t = time.perf_counter()
    with torch.no_grad():
        _, codes = run_and_get_code(c, y0)
    setup = time.perf_counter() - t
    counts = compiled_code_counts("\n".join(codes))

    def skip_guards() -> Any:
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return c.compiled_inference(y0)

    return {"compiled": lambda: c(y0), "compiled: graph call only": lambda: c.compiled_inference(y0),
            "compiled: graph, guards skipped": skip_guards}, {"compile_s": setup, **counts}


# --------------------------------------------------------------------------- AOTInductor


def aoti_path(f: torch.nn.Module, y0: torch.Tensor, opts: dict[str, Any], tmp: Path, tag: str) -> tuple[dict, dict]:
    """A batch-1 package (``to_aoti(dynamic_batch=False)``), called as a user does
    (``load_aoti``); the counts come from the package's own generated wrapper."""
    import zipfile

    from odeserve.export import load_aoti, to_aoti

    path = tmp / f"{tag}.pt2"
    t = time.perf_counter()
    to_aoti(f, y0, path, dynamic_batch=False, progress=False, parity_batches=(), **opts)
    setup = time.perf_counter() - t
    with zipfile.ZipFile(path) as z:
        code = "\n".join(z.read(n).decode() for n in z.namelist() if n.endswith(".wrapper.cpp"))
    model = load_aoti(path)
    return {"AOTI": lambda: model(y0)}, {"build_s": setup, **compiled_code_counts(code)}


# --------------------------------------------------------------------------- ORT


def _loop_body_nodes(path: Path) -> tuple[int, int]:
    import onnx

    g = onnx.load(str(path)).graph
    loops = [n for n in g.node if n.op_type == "Loop"]
    body = sum(len(a.g.node) for n in loops for a in n.attribute if a.HasField("g"))
    return len(g.node), body


def ort_path(f: torch.nn.Module, y0: torch.Tensor, opts: dict[str, Any], tmp: Path, tag: str) -> tuple[Any, dict]:
    """The loop export in an ORT session (returned) and its profile."""
    import onnxruntime as ort

    from odeserve.export import OnnxModel, to_onnx

    path = tmp / f"{tag}.onnx"
    t = time.perf_counter()
    to_onnx(f, mlp_y0(8, y0.shape[1]), path, mode="loop", **opts)
    setup = time.perf_counter() - t
    outer, body = _loop_body_nodes(path)
    model = OnnxModel(path, providers=["CPUExecutionProvider"], threads=1, inter_threads=1)
    yn = y0.numpy()
    feeds = {model.state_inputs[0]: yn}
    out = model.run(yn)
    steps = int(np.max(out["n_steps"])) if "n_steps" in out else int(opts["steps"])

    # ORT's profiler: per-node durations of a few runs
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / f"ortprof-{tag}")
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(5):
        sess.run(None, feeds)
    prof = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in prof if e.get("cat") == "Session" and e.get("name") == "model_run"][1:]  # first: warm-up
    nodes = [e for e in prof if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    t_first = runs[0]["ts"] if runs else 0
    nodes = [e for e in nodes if e["ts"] >= t_first]
    by_op: collections.Counter[str] = collections.Counter()
    for e in nodes:
        by_op[e.get("args", {}).get("op_name", "?")] += e["dur"]
    run_us = sum(e["dur"] for e in runs) / max(len(runs), 1)
    # Loop's own node time includes its body's nodes: count the body nodes only once
    node_us = (sum(by_op.values()) - by_op.get("Loop", 0)) / max(len(runs), 1)
    n_exec = sum(1 for e in nodes if e.get("args", {}).get("op_name") != "Loop") / max(len(runs), 1)
    info = {"export_s": setup, "outer nodes": outer, "loop body nodes": body, "steps": steps,
            "profiled run us": run_us, "node executions per run": n_exec,
            "sum of node kernel times us": node_us,
            "top op types (us per run)": {k: v / max(len(runs), 1) for k, v in by_op.most_common(8) if k != "Loop"}}
    return model, info


# --------------------------------------------------------------------------- diffrax


def diffrax_info(solve: diffrax_peer.JaxSolve) -> dict[str, int]:
    text = solve.compiled.as_text()
    return {"while loops": text.count(" while("), "fusions": len(re.findall(r"= \S+ fusion\(", text)),
            "dots (outside fusions)": len(re.findall(r"= \S+ dot\(", text)),
            "custom calls": text.count("custom-call(")}


# --------------------------------------------------------------------------- main


def profile_problem(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    dim, hidden, option_sets = PROBLEMS[name]
    f = make_mlp(dim, hidden)
    y0 = mlp_y0(1, dim)
    yj = jnp.asarray(y0.numpy())
    fns: dict[str, Callable[[], Any]] = {}
    info: dict[str, Any] = {}
    steps: dict[str, list[int]] = collections.defaultdict(list)
    for k, opts in enumerate(option_sets):
        tag = f"{'lo' if k == 0 else 'hi'}"
        s = diffrax_peer.diffrax_solve(diffrax_peer.jax_mlp(f), **opts)
        s.compile(yj)
        steps["diffrax"].append(s.solve(yj)[1]["steps"])
        fns[f"diffrax|{tag}"] = lambda s=s: s(yj)
        if k == 0:
            info["diffrax"] = diffrax_info(s)
        run = lambda opts=opts: odeserve.solve(f, y0, torch.tensor([0.0, 1.0]), **opts)  # noqa: E731
        with torch.no_grad():
            sol = run()
        steps["odeserve eager"].append(int(sol.stats["steps"]))
        fns[f"odeserve eager|{tag}"] = run
        info.setdefault("odeserve eager", {})[tag] = eager_ops(f, y0, opts)
        comp, cinfo = compiled_paths(f, y0, opts)
        info.setdefault("compiled", {})[tag] = cinfo
        for n, fn in comp.items():
            fns[f"{n}|{tag}"] = fn
            steps[n].append(steps["odeserve eager"][-1])
        if args.aoti:
            aoti, ainfo = aoti_path(f, y0, opts, tmp, f"{name[:3]}-{tag}")
            info.setdefault("AOTI", {})[tag] = ainfo
            for n, fn in aoti.items():
                fns[f"{n}|{tag}"] = fn
                steps[n].append(steps["odeserve eager"][-1])  # batch 1: per sample = joint
        model, oinfo = ort_path(f, y0, opts, tmp, f"{name[:3]}-{tag}")
        feeds = {model.state_inputs[0]: y0.numpy()}
        fns[f"ORT|{tag}"] = lambda s=model.session, feeds=feeds: s.run(None, feeds)
        steps["ORT"].append(oinfo["steps"])
        info.setdefault("ORT", {})[tag] = oinfo
        print(f"{name} {tag}: {dict((k, v[-1]) for k, v in steps.items())}", flush=True)
    with torch.no_grad():
        inner = {n: 20 if n.startswith("diffrax") else (5 if "2/64" in name else 1) for n in fns}
        res = time_alternating(fns, repeats=args.repeats, warmup=1, inner=inner, max_seconds=args.max_seconds,
                               clock="process")
    rows = {}
    for path in sorted({n.split("|")[0] for n in fns}, key=lambda n: list(fns).index(f"{n}|lo")):
        lo, hi = res[f"{path}|lo"]["median_s"], res[f"{path}|hi"]["median_s"]
        n_lo, n_hi = steps[path]
        per_step = (hi - lo) / (n_hi - n_lo) if n_hi != n_lo else float("nan")
        rows[path] = {"steps": [n_lo, n_hi], "ms": [lo * 1e3, hi * 1e3], "per_step_us": per_step * 1e6,
                      "fixed_us": (lo - n_lo * per_step) * 1e6}
        print(f"  {path:34s} {lo * 1e3:8.3f} / {hi * 1e3:8.3f} ms at {n_lo}/{n_hi} steps: "
              f"{per_step * 1e6:8.1f} us per step, {rows[path]['fixed_us']:8.1f} us fixed", flush=True)
    return {"problem": name, "rows": rows, "info": info}


def report(results: list[dict[str, Any]], env: dict[str, Any]) -> str:
    out = ["# Where a batch-1 step's time goes (bench/profile_latency.py)\n",
           f"torch {env['torch']}, jax {env['jax']}, onnxruntime {env['onnxruntime']}; {env['cpus']} shared CPUs "
           f"(load average {env.get('load_avg', '?')}), {env['time']}.  One thread, pinned to one core.  Per step and "
           "fixed cost from two step counts: time(n) = fixed + n × per-step (medians, process CPU clock).\n"]
    for r in results:
        out.append(f"\n## {r['problem']}, batch 1\n")
        d = r["rows"]["diffrax"]["per_step_us"]
        rows = [[p, f"{v['steps'][0]} / {v['steps'][1]}", f"{fmt(v['ms'][0])} / {fmt(v['ms'][1])}",
                 fmt(v["per_step_us"]), fmt(v["per_step_us"] / d, 2), fmt(v["fixed_us"])]
                for p, v in r["rows"].items()]
        out.append(md_table(["path", "steps", "ms", "µs per step", "per step × diffrax", "fixed µs per call"], rows))
        info = r["info"]
        e = info["odeserve eager"]["lo"]
        c = info["compiled"]["lo"]
        o = info["ORT"]["lo"]
        out.append("\n" + md_table(["what one step is made of", "count"], [
            ["eager: ATen ops per step", fmt(e["ops"] / max(e["steps"], 1))],
            ["eager: ATen ops in one f call", e["ops_in_f"]],
            *[[f"compiled: {k} per loop iteration", v] for k, v in c.items() if k != "compile_s"],
            *[[f"AOTI: {k} per loop iteration", v] for k, v in info.get("AOTI", {}).get("lo", {}).items()
              if k != "build_s"],
            ["ORT: nodes in the Loop body", o["loop body nodes"]],
            ["ORT: node executions per step (profiled)", fmt(o["node executions per run"] / max(o["steps"], 1))],
            ["ORT: share of a profiled run inside node kernels (the profiler itself slows ORT ~10×)", fmt(o["sum of node kernel times us"] / o["profiled run us"], 2)],
            *[[f"diffrax: {k} in the optimised HLO", v] for k, v in info["diffrax"].items()],
        ], "lr"))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--aoti", action="store_true", help="also batch-1 AOTInductor packages (a minute each, 4 in all)")
    args = ap.parse_args()
    args.repeats = args.repeats or (5 if args.quick else 15)
    args.max_seconds = args.max_seconds or (30.0 if args.quick else 150.0)
    import onnxruntime

    cpu = diffrax_peer.pin_to_one_cpu()
    env = {**environment(), **diffrax_peer.versions(), "onnxruntime": onnxruntime.__version__, "pinned_cpu": cpu}
    tmp = Path(tempfile.mkdtemp(prefix="odeserve-profile-latency-"))
    results = [profile_problem(p, args, tmp) for p in args.problems.split(",")]
    write_json("latency_profile.json", {"environment": env, "problems": results})
    text = report(results, env)
    write_text("latency_profile.md", text)
    print("\n" + text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
