"""The bodies of ``odeserve export | inspect | run | bench`` (the parser is in
:mod:`odeserve.cli`, which imports this module only when one of them runs)."""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["cmd_export", "cmd_inspect", "cmd_run", "cmd_bench", "load_factory"]


def load_factory(spec: str) -> Callable[..., Any]:
    """``package.module:callable`` → the callable (imported, not evaluated from a string)."""
    from odeserve.errors import InvalidOptionError

    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise InvalidOptionError(f"the factory must look like 'package.module:make_model', got {spec!r}")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise InvalidOptionError(f"cannot import {mod_name!r} for the factory {spec!r}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidOptionError(f"{mod_name!r} has no attribute {attr!r} (factory {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InvalidOptionError(f"the factory {spec!r} is not callable")
    return obj


def _load_arrays(path: str) -> list[np.ndarray]:
    """A ``.npy`` file (one array) or an ``.npz`` file (several, in the order stored)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such input file: {path!r}")
    data = np.load(p, allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            return [data[k] for k in data.files]
    return [data]


def _floats(text: str | None) -> list[float] | None:
    return None if text is None else [float(x) for x in text.replace(" ", "").split(",") if x]


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from odeserve.errors import InvalidOptionError
    from odeserve.export import to_onnx

    factory = load_factory(args.factory)
    kwargs = json.loads(args.factory_kwargs) if args.factory_kwargs else {}
    model = factory(**kwargs)
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise TypeError(f"{args.weights!r} holds a {type(state).__name__}, not a state dict")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"the factory returned a {type(model).__name__}; weights need an nn.Module")
        model.load_state_dict(state)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    if args.example:
        comps = [torch.from_numpy(np.ascontiguousarray(a)).to(dtype) for a in _load_arrays(args.example)]
    else:
        shape = [int(x) for x in args.state_shape.split(",") if x]
        comps = [torch.randn([args.batch] + shape, generator=torch.Generator().manual_seed(0), dtype=dtype)]
    example: Any = comps[0] if len(comps) == 1 else tuple(comps)
    steps: Any = None
    if args.steps is not None:
        steps = "auto" if args.steps == "auto" else int(args.steps)
    common: dict[str, Any] = dict(
        solver=args.solver, t0=args.t0, t1=args.t1, steps=steps, rtol=args.rtol, atol=args.atol,
        output_times=_floats(args.output_times), dynamic_times=args.dynamic_times, dtype=dtype,
        max_steps=args.max_steps, controller=args.controller, batch=args.batch_mode, parity_tol=args.parity_tol,
        parity_batches=[int(b) for b in args.parity_batches.split(",") if b],
    )
    fmt = getattr(args, "format", "onnx")
    aoti_only = [flag for flag, v in (("--exact-tanh", getattr(args, "exact_tanh", False)),
                                      ("--threads", getattr(args, "threads", None) is not None),
                                      ("--prefix-steps", getattr(args, "prefix_steps", None) is not None),
                                      ("--chunk-steps", getattr(args, "chunk_steps", None) is not None)) if v]
    if aoti_only and fmt != "aoti":
        raise InvalidOptionError(f"{' and '.join(aoti_only)} {'apply' if len(aoti_only) > 1 else 'applies'} to "
                                 "--format aoti only (the other formats keep torch.tanh, write no C++ kernels "
                                 "and hold one model)")
    if fmt == "onnx":
        result: Any = to_onnx(model, example, args.output, mode=args.mode or "loop", opset=args.opset or 20,
                              dynamic_batch=not args.static_batch, **common)
    else:
        from odeserve.export import to_aoti, to_exported_program, to_torchscript

        given = [flag for flag, v in (("--mode", args.mode), ("--opset", args.opset)) if v is not None]
        if given:
            raise InvalidOptionError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to "
                                     "--format onnx only")
        if fmt == "torchscript":
            if args.static_batch:
                raise InvalidOptionError("--static-batch: a TorchScript export always takes any batch size")
            result = to_torchscript(model, example, args.output, **common)
        elif fmt == "pt2":
            result = to_exported_program(model, example, args.output, dynamic_batch=not args.static_batch, **common)
        else:
            result = to_aoti(model, example, args.output, dynamic_batch=not args.static_batch,
                             fast_tanh=not args.exact_tanh, threads=args.threads,
                             prefix_steps=_count("--prefix-steps", args.prefix_steps),
                             chunk_steps=_count("--chunk-steps", args.chunk_steps), **common)
    print(f"wrote {result.path} ({result.size_bytes / 1024:.1f} KiB) in {result.export_seconds:.1f} s")
    if result.auto_steps is not None:
        print(f"steps='auto' chose {result.steps} steps (error {result.auto_steps.error:.3g}× the tolerance)")
    print("parity error " + ", ".join(f"{k}: {v:.2g}" for k, v in result.parity.items()))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    import zipfile

    from odeserve.export import OnnxModel

    if Path(args.model).is_file() and zipfile.is_zipfile(args.model):
        return _inspect_archive(args)
    model = OnnxModel(args.model, providers="CPUExecutionProvider")
    if args.json:
        print(json.dumps({"metadata": model.metadata, "inputs": [str(s) for s in model.inputs],
                          "outputs": [str(s) for s in model.outputs]}, indent=1))
        return 0
    print(f"{args.model}")
    width = max(len(k) for k in model.metadata)
    for k in sorted(model.metadata):
        print(f"  {k.ljust(width)}  {model.metadata[k]}")
    print(model.signature())
    return 0


def _inspect_archive(args: argparse.Namespace) -> int:
    """A TorchScript or PT2 file: its metadata (read from the archive, no weights loaded)
    and the signature it records."""
    from odeserve.export import read_artifact_metadata

    meta = read_artifact_metadata(args.model)
    if args.json:
        print(json.dumps({"metadata": meta}, indent=1))
        return 0
    print(f"{args.model}")
    width = max(len(k) for k in meta)
    for k in sorted(meta):
        print(f"  {k.ljust(width)}  {meta[k]}")
    batch = "batch" if meta.get("dynamic_batch") == "true" else meta.get("batch", "?")
    tails = json.loads(meta.get("state_shapes", "[]"))
    ins = [f"{n}: {meta.get('dtype')}[{', '.join(map(str, [batch] + t))}]"
           for n, t in zip(json.loads(meta.get("state_inputs", "[]")), tails)]
    ins += json.loads(meta.get("time_inputs", "[]"))
    print(f"forward({', '.join(ins)}) -> ({', '.join(json.loads(meta.get('outputs', '[]')))})")
    return 0


def _times_kwargs(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    dt = model.dtype
    if "t0" in model.time_inputs:
        kw["t0"] = np.asarray(args.t0 if args.t0 is not None else float(model.metadata["t0"]), dtype=dt)
        kw["t1"] = np.asarray(args.t1 if args.t1 is not None else float(model.metadata["t1"]), dtype=dt)
    elif "t" in model.time_inputs:
        t = _floats(args.t) or json.loads(model.metadata["output_times"])
        kw["t"] = np.asarray(t, dtype=dt)
    elif args.t0 is not None or args.t1 is not None or args.t is not None:
        raise ValueError(f"{args.model!r} has a fixed time span (exported without dynamic_times): drop --t0/--t1/--t")
    return kw


def cmd_run(args: argparse.Namespace) -> int:
    from odeserve.export import load_artifact

    model = load_artifact(args.model, providers=args.providers, threads=args.threads)
    arrays = _load_arrays(args.input)
    outs = model.run(*arrays, **_times_kwargs(args, model))
    status = np.asarray(outs["status"])
    for name, v in outs.items():
        v = np.asarray(v)
        print(f"{name}: {v.dtype}{list(v.shape)}")
    failed = int((status != 0).sum())
    print(f"status: {status.size - failed} of {status.size} samples succeeded")
    if args.output:
        out = Path(args.output)
        if out.suffix == ".npz":
            np.savez(out, **{k: np.asarray(v) for k, v in outs.items()})
        else:
            if len(model.state_outputs) != 1:
                raise ValueError("a tuple state has several outputs: save them with --output FILE.npz")
            np.save(out, np.asarray(outs[model.state_outputs[0]]))
        print(f"wrote {out}")
    return 1 if failed else 0


def cmd_bench(args: argparse.Namespace) -> int:
    from odeserve.export import load_artifact

    rows = []
    for threads in args.threads:
        model = load_artifact(args.model, providers=args.providers, threads=threads)
        tails = json.loads(model.metadata["state_shapes"])
        for batch in args.batch or _default_batches(model.metadata):
            rng = np.random.default_rng(0)
            arrays = [rng.standard_normal([batch] + tail).astype(model.dtype) for tail in tails]
            kw = _times_kwargs(argparse.Namespace(t0=None, t1=None, t=None, model=args.model), model)
            model.run(*arrays, **kw)  # warm-up (first run allocates)
            samples = []
            deadline = time.perf_counter() + args.max_seconds
            for _ in range(args.repeat):
                t = time.perf_counter()
                model.run(*arrays, **kw)
                samples.append(time.perf_counter() - t)
                if time.perf_counter() > deadline and len(samples) >= 3:
                    break
            med = statistics.median(samples)
            rows.append({"threads": threads, "batch": batch, "median_ms": med * 1e3, "min_ms": min(samples) * 1e3,
                         "runs": len(samples), "per_sample_us": med * 1e6 / batch})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    meta = model.metadata
    print(f"{args.model}: {meta.get('format', '?').split('/')[0]} solver={meta.get('solver')} mode={meta.get('mode')} "
          f"batch_mode={meta.get('batch_mode', 'per_sample')} steps={meta.get('steps', '-')} dtype={meta.get('dtype')}")
    print(f"{'threads':>7} {'batch':>6} {'median ms':>10} {'min ms':>8} {'µs/sample':>10} {'runs':>5}")
    for r in rows:
        print(f"{r['threads']:>7} {r['batch']:>6} {r['median_ms']:>10.3f} {r['min_ms']:>8.3f} "
              f"{r['per_sample_us']:>10.2f} {r['runs']:>5}")
    return 0


def _default_batches(meta: dict[str, str]) -> list[int]:
    """Batch 1 and 256, or the one batch a fixed-batch model takes (a model whose batch axis
    starts at 2 is timed from 2)."""
    if meta.get("dynamic_batch") == "false" and meta.get("batch"):
        return [int(meta["batch"])]
    return sorted({max(1, int(meta.get("batch_min", "1"))), 256})


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; odeserve's own errors (bad input, failed parity, ...) become one line on
    stderr and exit status 2 instead of a traceback."""
    from odeserve.errors import OdeserveError

    try:
        return func(args)
    except (OdeserveError, FileNotFoundError, TypeError, ValueError) as e:
        print(f"odeserve {args.command}: error: {e}", file=sys.stderr)
        return 2


def _count(flag: str, value: str | None) -> int | str:
    """``--prefix-steps`` / ``--chunk-steps``: ``auto`` (also when absent) or a count."""
    from odeserve.errors import InvalidOptionError

    if value is None or value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise InvalidOptionError(f"{flag} must be 'auto' or a step count >= 0, got {value!r}") from None
