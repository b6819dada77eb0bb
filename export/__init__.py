"""Deployment (installed as ``odeserve.export``): compiled solves and exported artifacts."""

from .compile import CompiledODE, ODEModule, SolveInfo, compile_solve

__all__ = ["ODEModule", "CompiledODE", "SolveInfo", "compile_solve"]

from .onnx import OnnxExport, OnnxModel, read_metadata, to_onnx  # noqa: E402

__all__ += ["to_onnx", "OnnxModel", "OnnxExport", "read_metadata"]

from .libtorch import (  # noqa: E402
    AotiModel,
    ArtifactExport,
    TorchScriptDeprecationWarning,
    load_aoti,
    read_artifact_metadata,
    to_aoti,
    to_exported_program,
    to_torchscript,
)

__all__ += ["to_torchscript", "to_exported_program", "to_aoti", "load_aoti", "AotiModel", "ArtifactExport",
            "read_artifact_metadata", "TorchScriptDeprecationWarning"]

from .runner import TorchArtifact, load_artifact  # noqa: E402

__all__ += ["load_artifact", "TorchArtifact"]
