"""The Python API: the command line's verbs as functions with typed results.

``import weightsmith`` exposes these names lazily (``weightsmith.convert`` ...); this package
imports the verb modules, which keep torch and the models out until a verb is called. What is
public and how it changes: docs/api.md.
"""

from typing import TYPE_CHECKING

from weightsmith._lazy import lazy_getattr
from weightsmith.api.quiet import quiet_libraries
from weightsmith.progress import Progress, ProgressCallback

# Each verb's module is imported on first use (PEP 562): the command line's quantize needs only
# ``files``, and importing every verb with its result types cost ~20 ms of its start-up.
if TYPE_CHECKING:
    from weightsmith.api.auto_quantize import AutoQuantizeResult
    from weightsmith.api.files import convert, export_onnx, inspect, quantize
    from weightsmith.api.hub import publish
    from weightsmith.api.models import load_model, tiny_pipeline
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

quiet_libraries()

WHERE = {
    "AutoQuantizeResult": "auto_quantize",
    "convert": "files",
    "export_onnx": "files",
    "inspect": "files",
    "quantize": "files",
    "publish": "hub",
    "load_model": "models",
    "tiny_pipeline": "models",
    "ConvertResult": "results",
    "Detection": "results",
    "ExportResult": "results",
    "ImatrixResult": "results",
    "InspectResult": "results",
    "LayerRow": "results",
    "PublishResult": "results",
    "QuantizeResult": "results",
    "CandidateScores": "scores",
    "GateOutcome": "scores",
    "LayerSensitivity": "scores",
    "SensitivityResult": "scores",
    "VerifyResult": "scores",
    "GenerationOptions": "scoring",
    "imatrix": "scoring",
    "sensitivity": "scoring",
    "verify": "scoring",
}
__getattr__ = lazy_getattr(__name__, WHERE)

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
