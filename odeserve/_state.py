"""Flattening of user states (a tensor or a tuple of tensors) to the loop's ``(rows, D)`` layout.

In ``joint`` mode the whole state is one row (one error norm, one step size for all of it);
in ``per_sample`` mode each sample (first axis, shared by every component) is a row.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from .errors import DtypeMismatchError, NonFiniteError, ShapeMismatchError

__all__ = ["StateSpec"]


class StateSpec:
    """Shapes of a state and the maps between it and the flat ``(rows, D)`` tensor."""

    def __init__(self, y0: Tensor | Sequence[Tensor], per_sample: bool) -> None:
        self.is_tuple = isinstance(y0, (tuple, list))
        comps: tuple[Any, ...] = tuple(y0) if self.is_tuple else (y0,)
        if not comps:
            raise ShapeMismatchError("y0 is an empty tuple: give at least one state tensor")
        for i, c in enumerate(comps):
            if not isinstance(c, Tensor):
                raise TypeError(f"y0{self._label(i)} is a {type(c).__name__}, not a torch.Tensor")
            if not c.is_floating_point():
                raise DtypeMismatchError(
                    f"y0{self._label(i)} has dtype {c.dtype}; states must be floating point (float32 or float64)"
                )
        dtypes = {c.dtype for c in comps}
        if len(dtypes) > 1:
            raise DtypeMismatchError(
                f"the components of y0 have different dtypes {sorted(map(str, dtypes))}: cast them to one dtype"
            )
        devices = {c.device for c in comps}
        if len(devices) > 1:
            raise DtypeMismatchError(f"the components of y0 are on different devices {sorted(map(str, devices))}")
        for i, c in enumerate(comps):
            if not bool(torch.isfinite(c).all()):
                raise NonFiniteError(f"y0{self._label(i)} contains NaN or Inf")
        self.per_sample = per_sample
        self.dtype = comps[0].dtype
        self.device = comps[0].device
        if per_sample:
            if any(c.ndim == 0 for c in comps):
                raise ShapeMismatchError(
                    "batch='per_sample' needs a batch axis (axis 0) on every component of y0; "
                    "got a 0-d tensor — use batch='joint' or add a batch axis"
                )
            sizes = {c.shape[0] for c in comps}
            if len(sizes) > 1:
                raise ShapeMismatchError(
                    f"batch='per_sample' needs one batch size on axis 0 of every component; got {sorted(sizes)}"
                )
            self.batch = comps[0].shape[0]
            self.tails = [tuple(c.shape[1:]) for c in comps]
        else:
            self.batch = 1
            self.tails = [tuple(c.shape) for c in comps]
        self.shapes = [tuple(c.shape) for c in comps]
        self.sizes = [int(torch.Size(tail).numel()) for tail in self.tails]
        self.width = sum(self.sizes)

    def _label(self, i: int) -> str:
        return f"[{i}]" if self.is_tuple else ""

    def flatten(self, y: Tensor | Sequence[Tensor], rows: int | None = None) -> Tensor:
        """``y`` (a state or a derivative) as ``(rows, D)``."""
        rows = self.batch if rows is None else rows
        if not self.is_tuple:
            return y.reshape(rows, self.width)  # type: ignore[union-attr]
        return torch.cat([c.reshape(rows, n) for c, n in zip(y, self.sizes)], dim=1)

    def unflatten(self, flat: Tensor) -> Tensor | tuple[Tensor, ...]:
        """The ``(rows, D)`` tensor (or ``(..., rows, D)``) back in the user's shapes."""
        lead = tuple(flat.shape[:-2])
        rows = flat.shape[-2]
        if not self.is_tuple:
            return flat.reshape(lead + self._shape(0, rows))
        parts = torch.split(flat, self.sizes, dim=-1)
        return tuple(p.reshape(lead + self._shape(i, rows)) for i, p in enumerate(parts))

    def _shape(self, i: int, rows: int) -> tuple[int, ...]:
        return ((rows,) + self.tails[i]) if self.per_sample else self.tails[i]

    def check_derivative(self, fy: Any, where: str) -> None:
        """Raise a named error unless ``fy`` (from ``f(t0, y0)``) matches ``y0`` exactly."""
        comps = tuple(fy) if isinstance(fy, (tuple, list)) else (fy,)
        if isinstance(fy, (tuple, list)) != self.is_tuple or len(comps) != len(self.shapes):
            want = f"a tuple of {len(self.shapes)} tensors" if self.is_tuple else "one tensor"
            got = f"a tuple of {len(comps)}" if isinstance(fy, (tuple, list)) else type(fy).__name__
            raise ShapeMismatchError(f"{where} returned {got}; it must return {want}, like y0")
        for i, (c, shape) in enumerate(zip(comps, self.shapes)):
            if not isinstance(c, Tensor):
                raise ShapeMismatchError(f"{where}{self._label(i)} is a {type(c).__name__}, not a tensor")
            if tuple(c.shape) != shape:
                raise ShapeMismatchError(
                    f"{where}{self._label(i)} has shape {tuple(c.shape)} but y0{self._label(i)} has shape {shape}; "
                    "f must return a tensor shaped like its state"
                )
            if c.dtype != self.dtype:
                raise DtypeMismatchError(
                    f"{where}{self._label(i)} has dtype {c.dtype} but y0 has {self.dtype}; "
                    "make f return the state's dtype (cast the module with .to(dtype))"
                )
            if not bool(torch.isfinite(c).all()):
                raise NonFiniteError(f"{where}{self._label(i)} contains NaN or Inf at the initial state")
