"""Deployment (installed as ``odeserve.export``): compiled solves and exported artifacts."""

from .compile import CompiledODE, ODEModule, SolveInfo, compile_solve

__all__ = ["ODEModule", "CompiledODE", "SolveInfo", "compile_solve"]

from .onnx import OnnxExport, OnnxModel, read_metadata, to_onnx  # noqa: E402

__all__ += ["to_onnx", "OnnxModel", "OnnxExport", "read_metadata"]
