""":class:`OnnxModel`: an exported solve run by ONNX Runtime, with its inputs checked.

One ``InferenceSession`` per model; ``InferenceSession.run`` is thread-safe and this wrapper
keeps no per-call state, so one :class:`OnnxModel` serves many threads at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from odeserve.errors import DtypeMismatchError, ShapeMismatchError, SolveFailedError
from odeserve.solution import Solution

from ._artifact import InvalidArtifactError, unprefixed

__all__ = ["OnnxModel", "TensorSpec", "available_providers"]

_NP_OF_ORT = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (a string for a symbolic axis) and dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: str

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


def available_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """``"auto"``: CUDA when this onnxruntime build has it, then CPU; else the list given."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    if providers == "auto":
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]
    if isinstance(providers, str):
        providers = [providers]
    missing = [p for p in providers if p not in have]
    if missing:
        raise ValueError(f"execution provider(s) {missing} not available in this onnxruntime; available: {have}")
    return list(providers)


def _spec(arg: Any) -> TensorSpec:
    dtype = _NP_OF_ORT.get(arg.type)
    return TensorSpec(arg.name, tuple(arg.shape), np.dtype(dtype).name if dtype else arg.type)


class OnnxModel:
    """An exported odeserve solve (:func:`odeserve.export.to_onnx`) in ONNX Runtime.

    ``model(y0)`` returns the solution in the exported layout (the final state, or one state
    per output time on axis 0) as numpy arrays for numpy input and torch tensors (on the
    input's device) for torch input; a tuple state gives a tuple.  A sample that failed
    (status ≠ 0) raises :class:`odeserve.SolveFailedError` unless ``throw=False``.
    ``model.run(...)`` returns every graph output by name (states, ``status``, ``n_steps``).
    Time inputs exported as dynamic are passed by name: ``model(y0, t0=0.0, t1=2.0)`` or
    ``model(y0, t=grid)``.

    providers: ``"auto"`` (CUDA when present, else CPU) or a list of ORT provider names.
    threads: intra-op threads (default: ORT's choice); ``inter_threads`` likewise.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        providers: str | Sequence[str] = "auto",
        *,
        threads: int | None = None,
        inter_threads: int | None = None,
        session_options: Any = None,
    ) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {str(self.path)!r}")
        so = session_options or ort.SessionOptions()
        if threads is not None:
            so.intra_op_num_threads = int(threads)
        if inter_threads is not None:
            so.inter_op_num_threads = int(inter_threads)
        so.log_severity_level = 3  # ORT's initializer-cleanup warnings are not the user's business
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=available_providers(providers))
        except Exception as e:  # noqa: BLE001 - ORT raises several pybind error types
            raise InvalidArtifactError(
                f"{str(self.path)!r} is not a readable ONNX model (corrupt or truncated?): {type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else e}"
            ) from None
        raw = dict(self.session.get_modelmeta().custom_metadata_map)
        self.metadata: dict[str, str] = unprefixed(raw)
        if self.metadata.get("format", "").split("/")[0] != "odeserve-onnx":
            raise InvalidArtifactError(
                f"{str(self.path)!r} is an ONNX model but not an odeserve export (no odeserve metadata); "
                "OnnxModel runs files written by odeserve.export.to_onnx"
            )
        self.inputs = [_spec(a) for a in self.session.get_inputs()]
        self.outputs = [_spec(a) for a in self.session.get_outputs()]
        self._check_signature()
        self.state_inputs: list[str] = json.loads(self.metadata["state_inputs"])
        self.state_outputs: list[str] = json.loads(self.metadata["state_outputs"])
        self.time_inputs: list[str] = json.loads(self.metadata.get("time_inputs", "[]"))
        self.is_tuple = self.metadata.get("tuple_state") == "true"
        self._by_name = {s.name: s for s in self.inputs}
        self._np_dtypes = {s.name: np.dtype(s.dtype) for s in self.inputs}
        self._cuda = "CUDAExecutionProvider" in self.session.get_providers()

    # ---------------------------------------------------------------- signature

    def _check_signature(self) -> None:
        want_in = json.loads(self.metadata.get("inputs", "null") or "null")
        want_out = json.loads(self.metadata.get("outputs", "null") or "null")
        got_in = [[s.name, s.dtype, len(s.shape)] for s in self.inputs]
        got_out = [[s.name, s.dtype, len(s.shape)] for s in self.outputs]
        if want_in != got_in or want_out != got_out:
            raise InvalidArtifactError(
                f"{str(self.path)!r}: the graph's signature does not match its odeserve metadata "
                f"(inputs {got_in} vs recorded {want_in}; outputs {got_out} vs recorded {want_out}); "
                "the file was modified after export"
            )

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.metadata["dtype"].replace("torch.", ""))

    def signature(self) -> str:
        """Inputs and outputs, one per line (what ``odeserve inspect`` prints)."""
        lines = ["inputs:"] + [f"  {s}" for s in self.inputs] + ["outputs:"] + [f"  {s}" for s in self.outputs]
        return "\n".join(lines)

    # ---------------------------------------------------------------- running

    def _feeds(self, states: Sequence[Any], times: Mapping[str, Any], named: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
        values: dict[str, Any] = {}
        if states and named.keys() & set(self.state_inputs):
            raise TypeError("give the state positionally or by name, not both")
        if len(states) > len(self.state_inputs):
            raise TypeError(f"the model takes {len(self.state_inputs)} state input(s) {self.state_inputs}; got {len(states)}")
        if len(states) == 1 and len(self.state_inputs) > 1 and isinstance(states[0], (tuple, list)):
            states = tuple(states[0])
        values.update(zip(self.state_inputs, states))
        for k, v in {**named, **{k: v for k, v in times.items() if v is not None}}.items():
            if k not in self._by_name:
                raise TypeError(f"unknown input {k!r}; the model's inputs are {[s.name for s in self.inputs]}")
            values[k] = v
        missing = [s.name for s in self.inputs if s.name not in values]
        if missing:
            hint = " (the time span was exported as a graph input: pass it by name)" if set(missing) & set(self.time_inputs) else ""
            raise TypeError(f"missing input(s) {missing}{hint}")
        like = next((v for v in values.values() if isinstance(v, torch.Tensor)), None)
        feeds: dict[str, Any] = {}
        batch: tuple[int, str] | None = None
        for spec in self.inputs:
            v = values[spec.name]
            arr = self._array(spec, v)
            if spec.name in self.state_inputs and arr.ndim:
                if batch is not None and arr.shape[0] != batch[0]:
                    raise ShapeMismatchError(
                        f"input {spec.name!r} has batch size {arr.shape[0]} but {batch[1]!r} has {batch[0]}: "
                        "every state component shares axis 0"
                    )
                batch = (arr.shape[0], spec.name)
            feeds[spec.name] = arr
        return feeds, like

    def _array(self, spec: TensorSpec, v: Any) -> Any:
        want = self._np_dtypes[spec.name]
        if isinstance(v, np.ndarray):
            v_np, ok = v, v.dtype == want
        elif isinstance(v, torch.Tensor):
            v_np = None if (self._cuda and v.is_cuda) else v.detach().cpu().numpy()
            ok = (v_np.dtype if v_np is not None else np.dtype(str(v.dtype).replace("torch.", ""))) == want
        elif isinstance(v, np.generic):
            v_np = np.asarray(v)
            ok = v_np.dtype == want
        elif isinstance(v, (float, int)) and not spec.shape:
            v_np, ok = np.asarray(v, dtype=want), True
        else:
            raise TypeError(f"input {spec.name!r} must be a numpy array or a torch tensor, got {type(v).__name__}")
        if not ok:
            got = str(v.dtype).replace("torch.", "") if isinstance(v, torch.Tensor) else np.dtype(v_np.dtype).name
            raise DtypeMismatchError(
                f"input {spec.name!r} has dtype {got} but the model takes {spec.dtype}; "
                f"convert it first (numpy: .astype(np.{spec.dtype}), torch: .to(torch.{spec.dtype}))"
            )
        shape = tuple(v.shape if v_np is None else v_np.shape)
        if len(shape) != len(spec.shape) or any(
            isinstance(d, int) and d != s for d, s in zip(spec.shape, shape)
        ):
            raise ShapeMismatchError(
                f"input {spec.name!r} has shape {list(shape)} but the model takes "
                f"[{', '.join('batch' if not isinstance(d, int) else str(d) for d in spec.shape)}]"
            )
        if v_np is None:
            return v  # a CUDA tensor, bound in place
        # np.ascontiguousarray would turn a 0-d time into shape (1,)
        return np.asarray(v_np, order="C")

    def run(self, *states: Any, t0: Any = None, t1: Any = None, t: Any = None, **named: Any) -> dict[str, Any]:
        """Every output by name, after checking every input's name, dtype and shape."""
        feeds, like = self._feeds(states, {"t0": t0, "t1": t1, "t": t}, named)
        if any(isinstance(v, torch.Tensor) for v in feeds.values()):
            outs = self._run_bound(feeds)
        else:
            outs = dict(zip([o.name for o in self.outputs], self.session.run(None, feeds)))
        if like is not None:
            return {k: torch.from_numpy(np.asarray(v)).to(like.device) for k, v in outs.items()}
        return outs

    def _run_bound(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """CUDA tensors in place through IOBinding (no host round trip for the inputs)."""
        binding = self.session.io_binding()
        for name, v in feeds.items():
            if isinstance(v, torch.Tensor):
                v = v.contiguous()
                binding.bind_input(name, "cuda", v.device.index or 0, np.dtype(str(v.dtype).replace("torch.", "")),
                                   list(v.shape), v.data_ptr())
            else:
                binding.bind_cpu_input(name, v)
        for o in self.outputs:
            binding.bind_output(o.name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip([o.name for o in self.outputs], binding.copy_outputs_to_cpu()))

    def __call__(self, *states: Any, t0: Any = None, t1: Any = None, t: Any = None, throw: bool = True, **named: Any) -> Any:
        outs = self.run(*states, t0=t0, t1=t1, t=t, **named)
        result = tuple(outs[n] for n in self.state_outputs)
        status = outs["status"]
        if throw and bool((status != 0).any()):
            st = status if isinstance(status, torch.Tensor) else torch.from_numpy(np.asarray(status))
            sol = Solution(ts=torch.empty(0), ys=result if self.is_tuple else result[0], status=st.cpu(),
                           stats={}, solver=self.metadata.get("solver", "?"), batch="per_sample")
            raise SolveFailedError(f"ONNX solve with {sol.solver!r} failed: {sol.describe_failure()}", sol)
        return result if self.is_tuple else result[0]

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, solver={self.metadata.get('solver')!r}, providers={self.session.get_providers()})"
