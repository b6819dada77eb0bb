"""Latency against diffrax under ``jax.jit`` (issue 9): every odeserve deployment path, side by side.

Cases (float32, t ∈ [0, 1], the time-concat MLP family of ``common.make_mlp``):

* ``a``: dopri5, rtol 1e-5, atol 1e-7, MLP 2/64, batch 1;
* ``b``: RK4, 100 steps, MLP 64/256, batch 1;
* ``c``: dopri5, rtol 1e-5, atol 1e-7, MLP 64/256, batch 512.

Contenders: diffrax (``jax.jit`` of the whole ``diffeqsolve``, async dispatch off: see
``diffrax_peer``), torchdiffeq eager, torchode eager, ``odeserve.solve`` eager,
``odeserve.export.compile_solve`` (Inductor; several option sets), the ``mode="loop"`` ONNX
export in ONNX Runtime (several session settings; for case ``c`` also the joint-batch export,
``to_onnx(batch="joint")``) and, with ``--aoti``, the AOTInductor
package of ``odeserve.export.to_aoti`` (case ``c`` also joint, with the I controller).  Every contender's final state is checked against
diffrax's before anything is timed (same weights, so the same ODE: fixed steps agree to
float32 round-off, adaptive solves to a few times the tolerance).  Compile/export times are
measured once, apart from the run times.

Timing: one core and one thread everywhere (the process is pinned to one CPU before jax
starts; ``torch.set_num_threads(1)``, XLA one Eigen thread, ORT ``intra_op_num_threads=1``),
:func:`common.time_alternating` round robin with diffrax as the reference timed right before
every other contender; the ratio ``× diffrax`` is the median of those paired ratios (drifts
in the machine's load cancel), on the process CPU clock (XLA may run a program on a thread
of its own: see ``diffrax_peer``; wall medians are in the JSON too).

Run: ``python bench/bench_latency.py [--quick] [--cases a,b] [--aoti] [--extra] [--threads-study]
[--name STEM]``;
writes bench/results/latency.json and latency.md (``--quick``: latency_quick.*; ``--name``:
STEM.*).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import diffrax_peer  # noqa: E402  (first: it configures XLA before jax is imported)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    autorange,
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

warnings.filterwarnings("ignore")


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    dim: int
    hidden: int
    batch: int
    solver: str
    steps: int | None = None
    rtol: float | None = None
    atol: float | None = None
    controller: str | None = None  # odeserve's step-size controller; None: its default (PI)

    @property
    def solve_options(self) -> dict[str, Any]:
        if self.steps is not None:
            return {"solver": self.solver, "steps": self.steps}
        ctrl = {"controller": self.controller} if self.controller else {}
        return {"solver": self.solver, "rtol": self.rtol, "atol": self.atol, **ctrl}

    def tolerance(self, y: np.ndarray) -> float:
        """How far two correct solutions may be apart: float32 round-off for the same fixed
        steps; a few times the local tolerance for two step-size controllers."""
        scale = float(np.abs(y).max())
        if self.steps is not None:
            return 2e-5 * (1.0 + scale)
        assert self.rtol is not None and self.atol is not None
        return 20.0 * (self.atol + self.rtol * scale)


CASES: dict[str, Case] = {
    "a": Case("a", "dopri5 rtol 1e-5 atol 1e-7, MLP 2/64, batch 1", 2, 64, 1, "dopri5", rtol=1e-5, atol=1e-7),
    "b": Case("b", "RK4 100 steps, MLP 64/256, batch 1", 64, 256, 1, "rk4", steps=100),
    "c": Case("c", "dopri5 rtol 1e-5 atol 1e-7, MLP 64/256, batch 512", 64, 256, 512, "dopri5", rtol=1e-5, atol=1e-7),
}

#: Inductor's addmm → pointwise-and-sum rewrite (``decompose_mm_pass``); on CPU it applies
#: when the batch is statically 1 (the batch-1 graph), so it never touches larger batches.
DECOMPOSE_MM = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}

#: compile_solve variants: name → (keyword arguments, "extra" = only with --extra).
COMPILE_VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "compiled": ({}, False),  # compile_solve's defaults
    "compiled, cpp_wrapper only": ({"options": {"cpp_wrapper": True}}, False),
    "compiled, cpp_wrapper + decompose_mm": ({"options": {"cpp_wrapper": True, **DECOMPOSE_MM}}, False),
    "compiled, no cpp_wrapper": ({"cpp_wrapper": False}, True),
    "compiled, max-autotune-no-cudagraphs": ({"mode": "max-autotune-no-cudagraphs"}, True),
    "compiled, cpp_wrapper + max_autotune": (
        {"options": {"cpp_wrapper": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}}, True),
}


@dataclass
class Contender:
    fn: Callable[[], Any]
    y1: np.ndarray
    setup_s: float | None = None  # compile / export (+ parity gate), once
    steps: int | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- contenders


def diffrax_contender(case: Case, f: torch.nn.Module, y0: torch.Tensor) -> Contender:
    solve = diffrax_peer.diffrax_solve(diffrax_peer.jax_mlp(f), **case.solve_options)  # diffrax's default: I
    yj = jnp.asarray(y0.numpy())
    compile_s = solve.compile(yj)
    y1, stats = solve.solve(yj)
    return Contender(lambda: solve(yj), y1, compile_s, stats["steps"], solve.description["controller"],
                     {"description": solve.description, **stats})


def torch_peers(case: Case, f: torch.nn.Module, y0: torch.Tensor, names: set[str]) -> dict[str, Contender]:
    out: dict[str, Contender] = {}
    o = case.solve_options
    kw = dict(method=o["solver"], rtol=case.rtol or 1e-5, atol=case.atol or 1e-7, steps=case.steps)
    if "torchdiffeq eager" in names:
        run = torchdiffeq_runner(f, y0, 0.0, 1.0, **kw)
        out["torchdiffeq eager"] = Contender(run, _np(run().y1), note="joint batch")
    if "torchode eager" in names:
        run = torchode_runner(f, y0, 0.0, 1.0, **kw)
        r = run()
        out["torchode eager"] = Contender(run, _np(r.y1), steps=int(r.stats["n_steps"].max()), note="per sample")
    if "odeserve eager" in names:
        run = odeserve_runner(f, y0, 0.0, 1.0, **kw, batch="joint")
        r = run()
        out["odeserve eager"] = Contender(run, _np(r.y1), steps=int(r.stats["steps"]), note="joint batch")
    return out


def compiled_contenders(case: Case, f: torch.nn.Module, y0: torch.Tensor, names: list[str],
                        batch: str = "joint") -> dict[str, Contender]:
    from odeserve.export import compile_solve

    out: dict[str, Contender] = {}
    for name in names:
        kw, _ = COMPILE_VARIANTS[name]
        c = compile_solve(f, t0=0.0, t1=1.0, batch=batch, **case.solve_options, **kw)
        t = time.perf_counter()
        with torch.no_grad():
            ys = c(y0)
        setup = time.perf_counter() - t
        c.module.return_info = True  # the same graph returns the step counts too
        with torch.no_grad():
            _, info = c(y0)
        c.module.return_info = False
        steps = int((info.accepted + info.rejected).max())
        out[name] = Contender(lambda c=c: c(y0), _np(ys[-1]), setup, steps, note=f"{batch} batch; {kw or 'defaults'}")
        if name == "compiled":
            # The same graph with Dynamo's guards skipped (only the guards that tell
            # compiled graphs apart are evaluated): what the Python wrapper around a
            # compiled solve costs in guard checks.
            def skip_guards(c: Any = c) -> Any:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return c(y0)

            out["compiled, skip_guard_eval_unsafe"] = Contender(skip_guards, _np(ys[-1]), steps=steps, note="compiled + "
                                                                "torch.compiler.set_stance(skip_guard_eval_unsafe=True)")
    return out


def ort_session_options(variant: str) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = {"ORT extended": "ORT_ENABLE_EXTENDED", "ORT basic": "ORT_ENABLE_BASIC"}.get(variant, "ORT_ENABLE_ALL")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if variant == "ORT no mem arena":
        so.enable_cpu_mem_arena = False
    if variant == "ORT no spinning":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


#: ORT variants: name → extra (only with --extra).  "ORT" is OnnxModel as a user calls it
#: (inputs checked); the others call InferenceSession.run on a prepared feed dict.
ORT_VARIANTS: dict[str, bool] = {
    "ORT": False, "ORT session.run": False, "ORT extended": True, "ORT basic": True,
    "ORT no mem arena": True, "ORT no spinning": True,
}


def ort_contenders(case: Case, f: torch.nn.Module, y0: torch.Tensor, tmp: Path, names: list[str],
                   batch: str = "per_sample") -> dict[str, Contender]:
    from odeserve.export import OnnxModel, to_onnx

    path = tmp / f"case-{case.key}{'-' + case.controller if case.controller else ''}-{batch}.onnx"
    t = time.perf_counter()
    export = to_onnx(f, mlp_y0(8, case.dim), path, mode="loop", batch=batch, **case.solve_options)
    setup = time.perf_counter() - t
    yn = y0.numpy()
    out: dict[str, Contender] = {}
    for name in names:
        model = OnnxModel(path, providers=["CPUExecutionProvider"], session_options=ort_session_options(name))
        r = model.run(yn)
        steps = int(np.max(r["n_steps"])) if "n_steps" in r else case.steps
        if name == "ORT":
            fn: Callable[[], Any] = lambda m=model: m.run(yn)
        else:
            feeds = {model.state_inputs[0]: yn}
            fn = lambda s=model.session, feeds=feeds: s.run(None, feeds)
        out[name] = Contender(fn, _np(r[model.state_outputs[0]]), setup if name == "ORT" else None, steps,
                              note=f"{batch.replace('_', ' ')}; export {export.export_seconds:.1f} s + parity gate")
    return out


def aoti_contender(case: Case, f: torch.nn.Module, y0: torch.Tensor, tmp: Path, batch: str = "per_sample",
                   name: str = "AOTI") -> dict[str, Contender]:
    """The AOTInductor package (``odeserve.export.to_aoti``), when this odeserve has it."""
    try:
        from odeserve.export import load_aoti, to_aoti
    except ImportError:
        return {}
    # Batch 1: a package for exactly that batch (a dynamic batch axis starts at 2 in
    # PyTorch's shape specialisation); batch 512: the dynamic-batch package.
    dynamic = case.batch > 1
    path = tmp / f"case-{case.key}-{batch}-{case.controller or 'default'}-{name.replace(' ', '_')}.pt2"
    t = time.perf_counter()
    try:
        to_aoti(f, y0 if not dynamic else mlp_y0(8, case.dim), path, dynamic_batch=dynamic, progress=False,
                batch=batch, **case.solve_options)
    except Exception as e:  # noqa: BLE001 - report, keep benchmarking the rest
        print(f"AOTI failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
        return {}
    setup = time.perf_counter() - t
    model = load_aoti(path)
    outs = model(y0)
    steps = int(outs[-1].max()) if case.steps is None else case.steps  # adaptive: the n_steps output
    mode = "per sample" if batch == "per_sample" else "joint"
    return {name: Contender(lambda: model(y0), _np(outs[0]), setup, steps,
                            note=f"{mode}; to_aoti(dynamic_batch={dynamic}) + load_aoti")}


@contextlib.contextmanager
def inductor_default_threads(n: int) -> Iterator[None]:
    """Build as odeserve did before its one-row default of ``threads=1``: Inductor's default
    thread setting, in a process running ``n`` threads (this machine's core count: Inductor
    then writes OpenMP regions whose team size the running process sets)."""
    import odeserve.export.libtorch as ol

    before, orig = torch.get_num_threads(), ol.thread_options
    torch.set_num_threads(n)
    ol.thread_options = lambda threads: {}
    try:
        yield
    finally:
        torch.set_num_threads(before)
        ol.thread_options = orig


def parallel_kernel_contenders(case: Case, f: torch.nn.Module, y0: torch.Tensor, tmp: Path,
                               aoti: bool) -> dict[str, Contender]:
    """--threads-study: batch-1 compile_solve (and AOTI package) written with OpenMP regions,
    as a build process with this machine's core count wrote them before odeserve compiled one
    sample for one thread; run, like every contender, on this process's one thread."""
    from odeserve.export import compile_solve

    cores = os.cpu_count() or 2
    out: dict[str, Contender] = {}
    c = compile_solve(f, t0=0.0, t1=1.0, batch="joint", **case.solve_options)
    c.__dict__["compiled_single"] = None  # batch 1 through the default-threads graph
    t = time.perf_counter()
    with inductor_default_threads(cores), torch.no_grad():
        ys = c(y0)
    out[f"compiled, {cores}-thread kernels (before)"] = Contender(
        lambda: c(y0), _np(ys[-1]), time.perf_counter() - t, case.steps,
        note=f"joint batch; compiled in a {cores}-thread process with Inductor's default threads")
    if aoti:
        with inductor_default_threads(cores):
            got = aoti_contender(case, f, y0, tmp, name=f"AOTI, {cores}-thread kernels (before)")
        for c_ in got.values():
            c_.note += f"; built in a {cores}-thread process with Inductor's default threads"
        out.update(got)
    return out


# --------------------------------------------------------------------------- one case


def run_case(case: Case, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    f = make_mlp(case.dim, case.hidden)
    y0 = mlp_y0(case.batch, case.dim)
    print(f"\n== case {case.key}: {case.title}", flush=True)
    contenders: dict[str, Contender] = {"diffrax": diffrax_contender(case, f, y0)}
    ref = contenders["diffrax"].y1
    print(f"diffrax: compile {contenders['diffrax'].setup_s:.1f} s, {contenders['diffrax'].steps} steps", flush=True)
    with torch.no_grad():
        contenders.update(torch_peers(case, f, y0, {"torchdiffeq eager", "torchode eager", "odeserve eager"}))
        comp = [n for n, (_, extra) in COMPILE_VARIANTS.items() if args.extra or not extra]
        contenders.update(compiled_contenders(case, f, y0, comp))
        ort_names = [n for n, extra in ORT_VARIANTS.items() if args.extra or not extra]
        contenders.update(ort_contenders(case, f, y0, tmp, ort_names))
        if case.steps is None:
            # diffrax's default controller is integral (I); odeserve's is PI.  The same
            # paths with odeserve's I controller show how much of a gap is step count.
            ci = dataclasses.replace(case, controller="i")
            contenders.update({f"{n} (controller i)": c for n, c in compiled_contenders(ci, f, y0, ["compiled"]).items()
                               if n == "compiled"})
            contenders.update({f"{n} (controller i)": c for n, c in ort_contenders(ci, f, y0, tmp, ["ORT"]).items()})
            if case.batch > 1:
                # to_onnx(batch="joint"): one step size for the batch, as diffrax steps it.
                for c_ in (case, ci):
                    label = " (controller i)" if c_.controller else ""
                    contenders.update({f"{n} joint{label}": c for n, c in
                                       ort_contenders(c_, f, y0, tmp, ["ORT"], batch="joint").items()})
        if args.aoti:
            contenders.update(aoti_contender(case, f, y0, tmp))
            if case.steps is None and case.batch > 1:
                ci = dataclasses.replace(case, controller="i")
                contenders.update(aoti_contender(ci, f, y0, tmp, batch="joint", name="AOTI joint (controller i)"))
        if args.threads_study and case.batch == 1:
            contenders.update(parallel_kernel_contenders(case, f, y0, tmp, args.aoti))
    tol = case.tolerance(ref)
    errors = {n: float(np.abs(c.y1.reshape(ref.shape) - ref).max()) for n, c in contenders.items()}
    for n, c in contenders.items():
        print(f"  {n:40s} setup {fmt(c.setup_s)} s, steps {c.steps}, max |y - y_diffrax| {errors[n]:.2g} "
              f"(tolerance {tol:.2g})", flush=True)
    bad = {n: e for n, e in errors.items() if not e <= tol}
    assert not bad, f"case {case.key}: solutions differ from diffrax's beyond {tol:.2g}: {bad}"

    fns = {n: c.fn for n, c in contenders.items()}
    with torch.no_grad():
        inner = {n: autorange(fn, target_s=0.01, max_inner=200) for n, fn in fns.items()}
        res = time_alternating(fns, repeats=args.repeats, warmup=1, inner=inner, max_seconds=args.max_seconds,
                               clock="process", reference="diffrax")
    d = res["diffrax"]["median_s"]
    rows = []
    for n, c in contenders.items():
        r = res[n]
        ratio = 1.0 if n == "diffrax" else r["median_ratio_to_ref"]
        rows.append({"contender": n, "median_ms": r["median_s"] * 1e3, "q1_ms": r["q1_s"] * 1e3,
                     "q3_ms": r["q3_s"] * 1e3, "wall_median_ms": r["wall_median_s"] * 1e3, "rounds": r["n"],
                     "inner": r["inner"], "x_diffrax": ratio, "x_diffrax_unpaired": r["median_s"] / d,
                     "setup_s": c.setup_s, "steps": c.steps, "max_abs_diff_vs_diffrax": errors[n], "note": c.note,
                     **({"extra": c.extra} if c.extra else {})})
        print(f"  {n:40s} {r['median_s'] * 1e3:9.3f} ms  ×{ratio:7.2f} diffrax", flush=True)
    return {"case": case.key, "title": case.title, "batch": case.batch, "mlp": f"{case.dim}/{case.hidden}",
            "solve": case.solve_options, "tolerance": tol, "rows": rows}


# --------------------------------------------------------------------------- report


def is_odeserve_path(name: str) -> bool:
    """An odeserve deployment path as a user runs it (the guard-skipping stance is unsafe in
    general: shown, not counted)."""
    return name.startswith(("odeserve", "compiled", "ORT", "AOTI")) and "unsafe" not in name


def report(results: list[dict[str, Any]], env: dict[str, Any], quick: bool) -> str:
    out = [
        "# Latency vs diffrax (bench/bench_latency.py)\n",
        f"torch {env['torch']}, jax {env['jax']}, diffrax {env['diffrax']}, onnxruntime {env['onnxruntime']}; "
        f"{env['cpus']} CPUs shared with other jobs (load average {env.get('load_avg', '?')}), {env['time']}"
        f"{' — quick mode' if quick else ''}; allocator: {env.get('malloc', 'glibc')} (every contender).  "
        "float32, t ∈ [0, 1], one thread everywhere, the process pinned "
        f"to one core.  Medians of round-robin rounds on the process CPU clock; **× diffrax** is the median of paired ratios (diffrax timed right before "
        "each sample).  Setup = compile / export (+ parity gate), paid once, not in the times.\n",
    ]
    for res in results:
        out.append(f"\n## ({res['case']}) {res['title']}\n")
        rows = [[r["contender"], fmt(r["median_ms"]), f"{fmt(r['q1_ms'])}–{fmt(r['q3_ms'])}", fmt(r["x_diffrax"]),
                 r["steps"] if r["steps"] is not None else "–", fmt(r["setup_s"]),
                 f"{r['max_abs_diff_vs_diffrax']:.1g}", r["note"]]
                for r in res["rows"]]
        out.append(md_table(["contender", "median ms", "IQR ms", "× diffrax", "steps", "setup s", "|Δy| vs diffrax",
                             "note"], rows, "lrrrrrrl"))
    out.append("\n## Target: odeserve's fastest path faster than diffrax\n")
    rows = []
    for res in results:
        ours = [r for r in res["rows"] if is_odeserve_path(r["contender"])]
        best = min(ours, key=lambda r: r["x_diffrax"])
        d = next(r for r in res["rows"] if r["contender"] == "diffrax")
        rows.append([f"({res['case']}) {res['title']}", f"{fmt(d['median_ms'])} ms", best["contender"],
                     f"{fmt(best['median_ms'])} ms", fmt(best["x_diffrax"]), "yes" if best["x_diffrax"] < 1 else "no"])
    out.append(md_table(["case", "diffrax", "fastest odeserve path", "its time", "× diffrax", "met"], rows, "lrlrrc"))
    out.append(NOTES)
    return "\n".join(out)


NOTES = """
## Notes

* **Noise.**  Two cores shared with other jobs (load average 2–5): single rows move by up to
  ±50 % between runs (e.g. "compiled, cpp_wrapper + decompose_mm", the same options as
  "compiled", measured 0.81–0.87 ms in other runs of case (a)); the paired × diffrax ratios
  are steadier than the medians.  The slower compile modes and the other ORT session
  settings (`--extra`, cases a and b): latency_extra.md — none beats the defaults.
* **Clock.**  XLA:CPU runs a large program on a thread of its own pool while the caller
  waits: on the thread CPU clock diffrax at batch 512 looked 2.4× faster than it is.  The
  process is pinned to one core (XLA then runs inline) and timed on the process CPU clock.
* **Step counts.**  diffrax's default controller is integral (I) on the joint batch's RMS
  norm; odeserve's default is PI, and the ONNX and AOTI exports step per sample by default
  (the loop runs until the slowest sample is done).  "(controller i)" rows use odeserve's I
  controller; "ORT joint" and "AOTI joint" rows (case c) export with `batch="joint"`, one
  step size and error norm for the whole batch, as diffrax steps it.
* **Where the time goes**: bench/results/latency_profile.md (per-step and fixed costs,
  kernels, nodes, allocations per iteration).
* **AOTI** (`--aoti`): batch-1 packages (`dynamic_batch=False`) for (a) and (b), the
  dynamic-batch package for (c); built with `decompose_mm_pass` at batch 1 and, since commit
  6551f07, with the solver's constants as literals in the loop (`odeserve.solver.Const`:
  dopri5's loop body went from ~56 inputs to 14) and called through the package's flat C++
  `run` (AOTI (a) ×3.1 → ×2.2).  The bench process runs one thread, so its packages were
  always serial code.
* **"(before)" rows** (`--threads-study`, batch 1): `compile_solve`'s batch-1 graph and the
  batch-1 AOTI package built the way odeserve built them in an ordinary process before one
  sample was compiled for one thread — Inductor's default threads in a process running as
  many threads as the machine has cores, so the kernels carry OpenMP regions whose team
  size is set at run time — and run, like every row, by this process's one thread.
"""


#: --malloc: shared libraries preloaded as the process's allocator (Debian packages
#: libtcmalloc-minimal4 and libjemalloc2; any other path is taken as given).
ALLOCATORS = {
    "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
}


def use_allocator(choice: str) -> str | None:
    """Re-run this process with ``choice`` preloaded (``LD_PRELOAD``) unless it already is:
    every contender, diffrax included, then allocates through it.  Returns the library."""
    if choice == "default":
        return None
    lib = ALLOCATORS.get(choice, choice)
    if not Path(lib).is_file():
        sys.exit(f"--malloc {choice}: {lib} not found (apt-get install libtcmalloc-minimal4 / libjemalloc2)")
    if lib not in os.environ.get("LD_PRELOAD", "").split(":"):
        env = {**os.environ, "LD_PRELOAD": ":".join(filter(None, [lib, os.environ.get("LD_PRELOAD", "")]))}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    return lib


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, results to latency_quick.*")
    ap.add_argument("--cases", default="a,b,c")
    ap.add_argument("--extra", action="store_true", help="also the slower compile modes and ORT settings")
    ap.add_argument("--aoti", action="store_true", help="also odeserve.export.to_aoti (minutes per case)")
    ap.add_argument("--threads-study", action="store_true",
                    help="batch 1: also compile_solve (and with --aoti to_aoti) built as before the one-row default "
                         "of threads=1 (Inductor's default in a process running as many threads as cores)")
    ap.add_argument("--malloc", default="default",
                    help="default (glibc), tcmalloc, jemalloc or a library path: preloaded for the whole process, "
                         "diffrax included")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--max-seconds", type=float, default=None, help="per case")
    ap.add_argument("--name", default=None, help="results file stem (default latency, or latency_quick)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = ap.parse_args()
    allocator = None if args.report_only else use_allocator(args.malloc)
    stem = args.name or ("latency_quick" if args.quick else "latency")
    if args.report_only:
        import json

        from common import RESULTS

        data = json.loads((RESULTS / f"{stem}.json").read_text())
        write_text(f"{stem}.md", report(data["cases"], data["environment"], data["args"]["quick"]))
        return
    args.repeats = args.repeats or (7 if args.quick else 21)
    args.max_seconds = args.max_seconds or (30.0 if args.quick else 180.0)
    import onnxruntime

    cpu = diffrax_peer.pin_to_one_cpu()
    env = {**environment(), **diffrax_peer.versions(), "onnxruntime": onnxruntime.__version__, "pinned_cpu": cpu,
           "malloc": allocator or "glibc"}
    tmp = Path(tempfile.mkdtemp(prefix="odeserve-bench-latency-"))
    results = [run_case(CASES[k], args, tmp) for k in args.cases.split(",")]
    write_json(f"{stem}.json", {"environment": env, "args": vars(args), "cases": results})
    text = report(results, env, args.quick)
    write_text(f"{stem}.md", text)
    print("\n" + text)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
