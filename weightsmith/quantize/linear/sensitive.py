"""Which quantized layers of a ComfyUI file keep full-precision matmuls: the N most sensitive in a
``weightsmith sensitivity`` ranking (``--sensitivity FILE --fp-layers N``).

The ranking (schema ``weightsmith.sensitivity/1``, ``sensitivity.json``) lists every Linear layer,
most sensitive first, by its Diffusers module name. Its layers keep their quantized weights; only
the matmul runs in the compute dtype (``full_precision_matrix_mult``), so a calibrated file spends
activation quantization only where it hurts least. To keep a layer's weight in float too, use
``--keep`` (the ranking's suggestions are --keep globs).
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from weightsmith.errors import UsageError
from weightsmith.io.structured import read_json_file

SENSITIVITY_SCHEMA = "weightsmith.sensitivity/1"


def full_precision_layers(
    path: str | Path | None, count: int | None, modules: Collection[str]
) -> dict[str, str]:
    """Diffusers module name -> why, for the ``count`` most sensitive of ``modules`` in ``path``."""
    if path is None and count is None:
        return {}
    if path is None or count is None:
        raise UsageError(
            "--sensitivity and --fp-layers go together",
            hint="give a `weightsmith sensitivity --report DIR` JSON and how many of its layers to keep in full precision",
        )
    if count < 0:
        raise UsageError(f"--fp-layers {count} is negative", hint="give a count of layers, 0 or more")
    doc = read_json_file(
        path,
        what=f"sensitivity ranking {path}",
        error=UsageError,
        hint="pass the sensitivity.json that `weightsmith sensitivity --report DIR` writes",
        allow_nonfinite=True,
    )
    rows = doc.get("layers") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or doc.get("schema") != SENSITIVITY_SCHEMA or not isinstance(rows, list):
        raise UsageError(
            f"{path} is not a weightsmith sensitivity ranking ({SENSITIVITY_SCHEMA})",
            hint="pass the sensitivity.json that `weightsmith sensitivity --report DIR` writes",
        )
    ranked = [r.get("module") for r in rows if isinstance(r, dict)]
    unknown = [m for m in ranked if not isinstance(m, str) or m not in modules]
    if unknown:
        raise UsageError(
            f"{path} ranks layer {str(unknown[0])[:80]!r}, which is not a Linear layer of this model",
            hint="rank the same model with `weightsmith sensitivity` (Diffusers module names)",
        )
    return {m: f"--fp-layers: sensitivity rank {i + 1}" for i, m in enumerate(ranked[:count])}
