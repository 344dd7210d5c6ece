"""The Python API: the command line's verbs as functions with typed results.

``import weightsmith`` exposes these names lazily (``weightsmith.convert`` ...); this package
imports the verb modules, which keep torch and the models out until a verb is called. What is
public and how it changes: docs/api.md.
"""

from weightsmith.api.auto_quantize import AutoQuantizeResult
from weightsmith.api.files import convert, export_onnx, inspect, quantize
from weightsmith.api.hub import publish
from weightsmith.api.models import load_model, tiny_pipeline
from weightsmith.api.quiet import quiet_libraries
from weightsmith.api.results import (
    ConvertResult,
    Detection,
    ExportResult,
    ImatrixResult,
    InspectResult,
    LayerRow,
    PublishResult,
    QuantizeResult,
)
from weightsmith.api.scores import (
    CandidateScores,
    GateOutcome,
    LayerSensitivity,
    SensitivityResult,
    VerifyResult,
)
from weightsmith.api.scoring import GenerationOptions, imatrix, sensitivity, verify
from weightsmith.progress import Progress, ProgressCallback

quiet_libraries()

__all__ = [
    "AutoQuantizeResult",
    "CandidateScores",
    "ConvertResult",
    "Detection",
    "ExportResult",
    "GateOutcome",
    "GenerationOptions",
    "ImatrixResult",
    "InspectResult",
    "LayerRow",
    "LayerSensitivity",
    "Progress",
    "ProgressCallback",
    "PublishResult",
    "QuantizeResult",
    "SensitivityResult",
    "VerifyResult",
    "convert",
    "export_onnx",
    "imatrix",
    "inspect",
    "load_model",
    "publish",
    "quantize",
    "sensitivity",
    "tiny_pipeline",
    "verify",
]
