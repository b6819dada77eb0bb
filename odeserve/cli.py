"""The ``odeserve`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

__all__ = ["main"]


def _plugins(args: argparse.Namespace) -> int:
    from .registry import get_registry

    reg = get_registry()
    rows = [("kind", "name", "order", "adaptive", "provided by")]
    for e in reg:
        order = adaptive = "-"
        if e.kind == "solver":
            err = getattr(e.obj, "error_order", None)
            order = f"{e.obj.order}({err})" if err else str(e.obj.order)
            adaptive = "yes" if e.obj.adaptive else "no"
        rows.append((e.kind, e.name, order, adaptive, e.provider))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    if reg.errors:
        print(f"\n{len(reg.errors)} plugin problem(s):")
        for err in reg.errors:
            print(f"  {type(err).__name__}: {err}")
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main
    from .errors import OdeserveError

    try:
        return demo_main(args)
    except OdeserveError as e:
        print(f"odeserve demo: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nodeserve demo: interrupted (no partial files were left)", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odeserve",
        description="Neural ODE solvers for PyTorch that compile and export.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("plugins", help="list every solver, controller and sensitivity and who provided it")
    p.set_defaults(func=_plugins)
    p = sub.add_parser(
        "demo", help="the main job: train a neural ODE on a spiral, export it to ONNX, time it, plot it",
        description="Train a neural ODE f(t, z) on trajectories of a point in the plane (adjoint, dopri5), export "
        "it to ONNX with an automatically chosen step count, check parity in ONNX Runtime, print a latency table "
        "and write plots (trajectories, vector field, JVP pushforward, VJP pullback, loss) to --out.",
    )
    from .demo import add_arguments

    add_arguments(p)
    p.set_defaults(func=_demo)
    _add_export_commands(sub)
    return parser


def _deferred(name: str):  # type: ignore[no-untyped-def]
    """A command body from :mod:`odeserve.export._cli`, imported only when it runs (onnx,
    onnxruntime and the exporters are optional and slow to import)."""

    def run(args: argparse.Namespace) -> int:
        from odeserve.export import _cli

        return _cli.run_command(getattr(_cli, name), args)

    return run


def _add_export_commands(sub) -> None:  # type: ignore[no-untyped-def]
    p = sub.add_parser(
        "export", help="export a saved model's solve to ONNX, TorchScript, torch.export or AOTInductor "
        "(parity-checked against the eager solve)",
        description="Build the model with FACTORY (package.module:make_model), load --weights (a torch.save'd "
        "state dict, read with weights_only=True), export the solve to --output in --format and check the written "
        "file against the eager solve (ONNX Runtime for onnx; torch.jit.load, torch.export.load or the "
        "AOTInductor loader for the others). Formats: onnx (.onnx, ONNX Runtime), torchscript (.pt, torch.jit.load "
        "/ LibTorch), pt2 (.pt2, torch.export.load), aoti (.pt2, AOTInductor package; compiling takes minutes).",
    )
    p.add_argument("factory", help="package.module:callable returning the nn.Module f(t, y)")
    p.add_argument("-o", "--output", required=True, help="the file to write (.onnx, .pt or .pt2)")
    p.add_argument("--format", choices=("onnx", "torchscript", "pt2", "aoti"), default="onnx",
                   help="artifact format (default onnx)")
    p.add_argument("--weights", help="state dict saved with torch.save(model.state_dict(), path)")
    p.add_argument("--factory-kwargs", help="JSON object of keyword arguments for the factory")
    ex = p.add_mutually_exclusive_group(required=True)
    ex.add_argument("--example", help="example batch of initial states: .npy (one tensor) or .npz (tuple state)")
    ex.add_argument("--state-shape", help="shape of one sample's state, e.g. '2' or '3,4' (random example batch)")
    p.add_argument("--batch", type=int, default=4, help="example batch size with --state-shape (default 4)")
    p.add_argument("--solver", default="rk4")
    p.add_argument("--steps", help="fixed-step count, or 'auto' (with --rtol/--atol)")
    p.add_argument("--rtol", type=float)
    p.add_argument("--atol", type=float)
    p.add_argument("--t0", type=float)
    p.add_argument("--t1", type=float)
    p.add_argument("--output-times", help="comma-separated output times (first and last are the span)")
    p.add_argument("--mode", choices=("loop", "unrolled"),
                   help="onnx only: one ONNX Loop (default) or the unrolled steps")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--opset", type=int, help="onnx only: ONNX opset (default 20)")
    p.add_argument("--max-steps", type=int, default=10_000)
    p.add_argument("--controller", default="pi", help="adaptive solvers' step-size controller (default pi; i: integral)")
    p.add_argument("--batch-mode", choices=("per_sample", "joint"), default="per_sample",
                   help="per_sample: each sample its own steps (default); joint: one step size and error norm "
                        "for the whole batch")
    p.add_argument("--dynamic-times", action="store_true", help="time span / output times as graph inputs")
    p.add_argument("--static-batch", action="store_true",
                   help="fix the batch size to the example's (onnx, pt2, aoti; TorchScript is always dynamic)")
    p.add_argument("--exact-tanh", action="store_true",
                   help="aoti only: compile torch.tanh as is (default: float32 tanh as XLA's rational approximation, "
                        "<= 3.1 float32 eps, faster at batch 1)")
    p.add_argument("--threads", type=int,
                   help="aoti only: the thread count the package's kernels are written for (default: 1 for a "
                        "--static-batch package of one row, else this process's torch thread count)")
    p.add_argument("--prefix-steps",
                   help="aoti only: step attempts of the straight-line 'prefix' model that a --static-batch "
                        "one-row adaptive package runs before its loop (default auto: the example's attempts "
                        "plus a margin; 0: none)")
    p.add_argument("--chunk-steps",
                   help="aoti only: steps per call of the straight-line 'chunk' model that a --static-batch "
                        "one-row fixed-step package runs instead of its loop (default auto: min(4, steps); 0: none)")
    p.add_argument("--parity-tol", type=float)
    p.add_argument("--parity-batches", default="1,7,256", help="batch sizes of the parity check (default 1,7,256)")
    p.set_defaults(func=_deferred("cmd_export"))

    p = sub.add_parser("inspect", help="print an exported model's metadata (.onnx, .pt, .pt2) and signature")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_deferred("cmd_inspect"))

    p = sub.add_parser("run", help="run an exported model (.onnx in ONNX Runtime; .pt, .pt2 in PyTorch) on a "
                       ".npy/.npz batch")
    p.add_argument("model")
    p.add_argument("--input", required=True, help=".npy (one state tensor) or .npz (tuple state, in order)")
    p.add_argument("--output", help="write the result: .npy (the state) or .npz (every output)")
    p.add_argument("--t0", type=float)
    p.add_argument("--t1", type=float)
    p.add_argument("--t", help="comma-separated output times (models exported with dynamic output times)")
    p.add_argument("--threads", type=int, help="intra-op threads (ONNX Runtime's, or PyTorch's for .pt/.pt2)")
    p.add_argument("--providers", default="auto", help="ONNX Runtime execution providers (ONNX files only)")
    p.set_defaults(func=_deferred("cmd_run"))

    p = sub.add_parser("bench", help="time an exported model (.onnx in ONNX Runtime; .pt, .pt2 in PyTorch)")
    p.add_argument("model")
    p.add_argument("--batch", type=int, nargs="+",
                   help="batch sizes (default: 1 and 256; a fixed-batch model: its batch)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--max-seconds", type=float, default=10.0, help="per configuration")
    p.add_argument("--providers", default="auto", help="ONNX Runtime execution providers (ONNX files only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_deferred("cmd_bench"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
