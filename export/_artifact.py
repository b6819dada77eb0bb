"""What every exported artifact shares: named errors, an output path that is checked before
the slow export starts and written atomically after the parity gate passes, the parity
measure, and the provenance metadata (solver, tolerances, versions) stored with the file.

Used by the ONNX exporter (:mod:`odeserve.export.onnx`); written for the TorchScript and
AOTInductor exporters too, so that every artifact says the same things the same way.
"""

from __future__ import annotations

import contextlib
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from odeserve.errors import OdeserveError

__all__ = [
    "ExportError",
    "UnsupportedOpError",
    "DataDependentControlFlowError",
    "ParityError",
    "StepsNotReachedError",
    "InvalidArtifactError",
    "check_writable",
    "atomic_output",
    "parity_error",
    "default_tolerance",
    "provenance",
    "METADATA_PREFIX",
]

#: Every metadata key an odeserve exporter writes starts with this.
METADATA_PREFIX = "odeserve."


class ExportError(OdeserveError, RuntimeError):
    """The solve could not be exported.  The message names the cause and what to change."""


class UnsupportedOpError(ExportError):
    """``f`` uses an operation the target format cannot express; ``op`` names it."""

    def __init__(self, message: str, op: str) -> None:
        super().__init__(message)
        self.op = op


class DataDependentControlFlowError(ExportError):
    """``f`` (or a plugin) branches in Python on a tensor's value: a trace would freeze the
    branch taken for the example, so the export refuses instead."""


class ParityError(ExportError):
    """The exported artifact does not reproduce the eager solve within the tolerance; no file
    was written.  ``errors`` maps each checked input (``"batch 7"``, ...) to its error."""

    def __init__(self, message: str, errors: Mapping[str, float], tolerance: float) -> None:
        super().__init__(message)
        self.errors = dict(errors)
        self.tolerance = tolerance


class StepsNotReachedError(OdeserveError, ValueError):
    """``steps="auto"`` found no step count within the cap that meets the tolerance;
    ``best_steps``/``best_error`` say how close it got."""

    def __init__(self, message: str, best_steps: int, best_error: float) -> None:
        super().__init__(message)
        self.best_steps = best_steps
        self.best_error = best_error


class InvalidArtifactError(OdeserveError, ValueError):
    """A file that is not a readable artifact of this kind (corrupt, truncated, not made by
    odeserve, or with a signature other than the one its metadata records)."""


# --------------------------------------------------------------------------- output path


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail fast, before a slow export, when ``path`` cannot be written: its folder must exist
    and accept new files (the artifact is written next to it first, then renamed)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if p.exists() and p.is_dir():
        raise ExportError(f"output path {str(p)!r} is a directory; give a file name such as {str(p / 'model.onnx')!r}")
    if not parent.is_dir():
        raise ExportError(f"cannot write {str(p)!r}: folder {str(parent)!r} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise ExportError(f"cannot write {str(p)!r}: folder {str(parent)!r} is not writable ({e.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    if p.exists() and not os.access(p, os.W_OK):
        raise ExportError(f"cannot write {str(p)!r}: the existing file is read-only")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary file next to ``path``; on a clean exit it is renamed over ``path``
    (atomic on POSIX and Windows), on an exception it is deleted, so a failed export never
    leaves a file behind and never clobbers an existing good one."""
    p = check_writable(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent if str(p.parent) else ".")
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; the artifact gets the usual mode
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


# --------------------------------------------------------------------------- parity


def default_tolerance(dtype: torch.dtype) -> float:
    """Parity tolerance on :func:`parity_error` by dtype: a few thousand ulps of the state's
    precision, which a correct export meets with room to spare (float32: 1e-4, float64: 1e-9)."""
    return {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-4)


def parity_error(got: Any, want: Any) -> float:
    """``max |got − want| / max(1, max |want|)`` over arrays or tensors (NaN where both are NaN
    counts as equal; NaN on one side only is an infinite error)."""
    import numpy as np

    a = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    b = np.asarray(want.detach().cpu() if isinstance(want, torch.Tensor) else want, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    if np.isnan(diff).any():
        return float("inf")
    scale = max(1.0, float(np.nanmax(np.abs(b))) if not np.isnan(b).all() else 1.0)
    return float(diff.max()) / scale


# --------------------------------------------------------------------------- metadata


def provenance() -> dict[str, str]:
    """Versions and time of the export (every artifact records them)."""
    import odeserve

    return {
        "odeserve_version": odeserve.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def stringify(meta: Mapping[str, Any]) -> dict[str, str]:
    """Metadata values as strings under :data:`METADATA_PREFIX` (formats store strings)."""
    import json

    out: dict[str, str] = {}
    for k, v in meta.items():
        if v is None:
            continue
        if isinstance(v, str):
            s = v
        elif isinstance(v, bool):
            s = "true" if v else "false"
        elif isinstance(v, float):
            s = repr(v)
        elif isinstance(v, (list, tuple, dict)):
            s = json.dumps(v)
        else:
            s = str(v)
        out[k if k.startswith(METADATA_PREFIX) else METADATA_PREFIX + k] = s
    return out


def unprefixed(meta: Mapping[str, str]) -> dict[str, str]:
    """The odeserve keys of a file's metadata, prefix removed."""
    n = len(METADATA_PREFIX)
    return {k[n:]: v for k, v in meta.items() if k.startswith(METADATA_PREFIX)}
