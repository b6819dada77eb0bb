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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="odeserve",
        description="Neural ODE solvers for PyTorch that compile and export.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("plugins", help="list every solver, controller and sensitivity and who provided it")
    p.set_defaults(func=_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
