"""One front for every exported file: :func:`load_artifact` opens an ONNX model (ONNX
Runtime), a TorchScript ``.pt``, an exported-program ``.pt2`` or an AOTInductor ``.pt2``
package by the odeserve metadata inside it, and ``run(*states, t0=, t1=, t=)`` returns
every output by name (states, ``status``, ``n_steps`` where exported).  This is what
``odeserve run`` and ``odeserve bench`` call, so the CLI serves every format it exports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ._artifact import InvalidArtifactError

__all__ = ["TorchArtifact", "load_artifact"]


class TorchArtifact:
    """A TorchScript, exported-program or AOTInductor file of :mod:`odeserve.export`, loaded
    for running from numpy or torch inputs: the counterpart of :class:`OnnxModel` for the
    PyTorch formats (same ``metadata``, ``dtype``, ``state_inputs``, ``state_outputs``,
    ``time_inputs`` and ``run``).  Inputs are checked against the metadata before the call.

    These files run on the CPU (where they were exported); ``threads`` sets PyTorch's
    intra-op thread count for the process (``torch.set_num_threads``).
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        from .compile import check_threads
        from .libtorch import FORMATS, InputSpec, load_aoti, read_artifact_metadata

        self.path = Path(path)
        self.metadata = read_artifact_metadata(self.path)
        self.format = self.metadata.get("format", "")
        # The input check; an AOTInductor package's loader (AotiModel) makes the same one itself.
        self._inputs = None if self.format == FORMATS["aoti"] else InputSpec.of(self.path.name, self.metadata)
        if check_threads(threads) is not None:
            torch.set_num_threads(threads)
        if self.format == FORMATS["aoti"]:
            self._model: Any = load_aoti(self.path)
        elif self.format == FORMATS["torchscript"]:
            self._model = torch.jit.load(str(self.path), map_location="cpu")
        elif self.format == FORMATS["pt2"]:
            self._model = torch.export.load(str(self.path)).module()
        else:
            raise InvalidArtifactError(f"{str(self.path)!r} is a {self.format or 'non-odeserve'} file; "
                                       f"odeserve runs {', '.join(sorted(FORMATS.values()))} and ONNX files")
        self.state_inputs: list[str] = json.loads(self.metadata["state_inputs"])
        self.time_inputs: list[str] = json.loads(self.metadata.get("time_inputs", "[]"))
        self.outputs: list[str] = json.loads(self.metadata["outputs"])
        self.state_outputs = self.outputs[: len(self.state_inputs)]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.metadata["dtype"])

    def run(self, *states: Any, t0: Any = None, t1: Any = None, t: Any = None) -> dict[str, Any]:
        """Every output by name: numpy arrays for numpy inputs, tensors for tensor inputs."""
        if len(states) == 1 and len(self.state_inputs) > 1 and isinstance(states[0], (tuple, list)):
            states = tuple(states[0])
        given = {"t0": t0, "t1": t1, "t": t}
        extra = [k for k, v in given.items() if v is not None and k not in self.time_inputs]
        if extra:
            raise TypeError(f"{self.path.name} takes no {extra} input (its time inputs: {self.time_inputs or 'none'})")
        missing = [k for k in self.time_inputs if given[k] is None]
        if missing:
            raise TypeError(f"missing input(s) {missing} (the time span was exported as a graph input: pass it by name)")
        numpy_in = not any(isinstance(x, torch.Tensor) for x in states)
        inputs = [self._tensor(x, f"state input {i}") for i, x in enumerate(states)]
        inputs += [self._tensor(given[k], k) for k in self.time_inputs]
        if self._inputs is not None:
            self._inputs.check(inputs)
        with torch.no_grad():
            outs = self._model(*inputs)
        if len(outs) != len(self.outputs):
            raise InvalidArtifactError(f"{self.path.name} returned {len(outs)} outputs; its metadata names "
                                       f"{len(self.outputs)}: {self.outputs}")
        return {name: (v.numpy() if numpy_in else v) for name, v in zip(self.outputs, outs)}

    def _tensor(self, x: Any, what: str) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            return x
        if isinstance(x, (np.ndarray, np.generic, float, int)):
            arr = np.asarray(x)
            if isinstance(x, (float, int)):
                arr = arr.astype(self.dtype)
            return torch.from_numpy(np.ascontiguousarray(arr) if arr.ndim else arr.copy())
        raise TypeError(f"{what} must be a numpy array or a torch tensor, got {type(x).__name__}")

    def __repr__(self) -> str:
        return f"TorchArtifact({str(self.path)!r}, format={self.format!r}, solver={self.metadata.get('solver')!r})"


def load_artifact(path: str | os.PathLike[str], *, providers: str | Sequence[str] = "auto",
                  threads: int | None = None) -> Any:
    """Open any file odeserve exports for running: an :class:`OnnxModel` (ONNX Runtime, with
    ``providers``) for an ONNX file, else a :class:`TorchArtifact` (TorchScript,
    exported program, AOTInductor package; CPU)."""
    import zipfile

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    if zipfile.is_zipfile(p):
        if providers != "auto":
            raise ValueError(f"{p.name} is a PyTorch file, which runs on the CPU: execution providers apply to "
                             "ONNX files only (drop --providers)")
        return TorchArtifact(p, threads=threads)
    from .onnx import OnnxModel

    return OnnxModel(p, providers=providers, threads=threads)
