"""weightsmith: convert, quantize and verify the weights of video and image diffusion models.

The verbs (``weightsmith.convert``, ``weightsmith.quantize``, ``weightsmith.verify`` ...) and their
result types are loaded on first use (PEP 562), so ``import weightsmith`` stays light (no torch).
Names in ``__all__`` are the public API (docs/api.md says what that promises); submodules and
``weightsmith._*`` are internal. Errors: ``weightsmith.errors`` (each also the builtin it is).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from weightsmith._version import __version__

# A library leaves logging to its caller: without a configured handler nothing is printed.
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from weightsmith.api import (
        AutoQuantizeResult,
        CandidateScores,
        ConvertResult,
        Detection,
        ExportResult,
        GateOutcome,
        GenerationOptions,
        ImatrixResult,
        InspectResult,
        LayerRow,
        LayerSensitivity,
        Progress,
        ProgressCallback,
        PublishResult,
        QuantizeResult,
        SensitivityResult,
        VerifyResult,
        convert,
        export_onnx,
        imatrix,
        inspect,
        load_model,
        publish,
        quantize,
        sensitivity,
        tiny_pipeline,
        verify,
    )

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
    "__version__",
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


# Verbs named like an internal package: the package itself is the verb (weightsmith/_facade.py).
_MODULE_VERBS = frozenset({"convert", "inspect", "publish", "quantize", "verify"})


def __getattr__(name: str) -> Any:
    """Load a public name from ``weightsmith.api`` when it is first asked for (PEP 562)."""
    import importlib

    if name in _MODULE_VERBS:
        return importlib.import_module(f"{__name__}.{name}")
    if name in __all__:
        import weightsmith.api as api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'weightsmith' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
