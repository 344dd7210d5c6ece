"""What the file verbs return: typed, frozen records whose ``to_json()`` is the CLI's ``--json``.

Every record names its JSON schema (``weightsmith.<verb>/1``); a field is added to a schema
without changing its number, a field's meaning never changes under one number. Timings
(``seconds``) are the only fields that differ between two runs on the same inputs.
No torch here: a script can import these names (and type against them) cheaply.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INSPECT_SCHEMA = "weightsmith.inspect/1"
CONVERT_SCHEMA = "weightsmith.convert/1"
QUANTIZE_SCHEMA = "weightsmith.quantize/1"
IMATRIX_SCHEMA = "weightsmith.imatrix/1"
PUBLISH_SCHEMA = "weightsmith.publish/1"
EXPORT_SCHEMA = "weightsmith.export-onnx/1"


@dataclass(frozen=True)
class Detection:
    """What a checkpoint was recognised as (``None`` fields: not told by its keys and shapes)."""

    family: str
    component: str
    layout: str
    variant: str | None

    @staticmethod
    def of(d: Mapping[str, Any] | None) -> Detection | None:
        if not d:
            return None
        return Detection(str(d["family"]), str(d["component"]), str(d["layout"]), d.get("variant"))


@dataclass(frozen=True)
class InspectResult:
    """``inspect``: a checkpoint described without loading it; a pipeline lists its components.

    ``document`` is the whole report (dtypes, quantized tensor types, metadata, config, files)."""

    path: str
    container: str
    parameters: int
    bytes_on_disk: int
    detection: Detection | None
    components: Mapping[str, InspectResult] = field(default_factory=dict)
    document: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @staticmethod
    def of(doc: Mapping[str, Any]) -> InspectResult:
        comps = {
            name: InspectResult.of({"path": str(Path(doc["path"]) / name), **c})
            for name, c in doc.get("components", {}).items()
        }
        return InspectResult(
            path=str(doc["path"]),
            container=str(doc["container"]),
            parameters=int(doc["parameters"]),
            bytes_on_disk=int(doc["bytes_on_disk"]),
            detection=Detection.of(doc.get("detection")),
            components=comps,
            document=doc,
        )

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.inspect/1`` document (as ``weightsmith inspect --json`` prints it)."""
        return copy.deepcopy(dict(self.document))


@dataclass(frozen=True)
class ConvertResult:
    """``convert``: where the output went and what the conversion said about it."""

    dst: Path
    layout: str
    bytes: int
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.convert/1`` document."""
        return {
            "schema": CONVERT_SCHEMA,
            "dst": str(self.dst),
            "layout": self.layout,
            "bytes": self.bytes,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class LayerRow:
    """One tensor of a quantized output: the row of the per-layer table (DST.layers.json).

    ``type`` is a ggml type, a scheme or a dtype; ``sqnr_db`` None where it was not measured
    (an exact copy is +inf; the JSON row writes a non-finite one as null, others rounded)."""

    name: str
    shape: tuple[int, ...]
    type: str
    reason: str
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None
    imatrix: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "type": self.type,
            "reason": self.reason,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "sqnr_db": None
            if self.sqnr_db is None or not math.isfinite(self.sqnr_db)
            else round(self.sqnr_db, 3),
            "imatrix": self.imatrix,
        }


@dataclass(frozen=True)
class QuantizeResult:
    """``quantize``: the output, its per-layer table and the run's notes."""

    dst: Path
    scheme: str
    layers: tuple[LayerRow, ...]
    seconds: float
    layers_path: Path | None = None
    notes: tuple[str, ...] = ()
    #: what the calibration run measured (``calibrate=True``), one line each
    calibration: tuple[str, ...] = ()
    #: the run's internal record, for the command line's summary (not public)
    _internal: Any = field(default=None, repr=False, compare=False)

    @property
    def bytes_before(self) -> int:
        return sum(r.bytes_before for r in self.layers)

    @property
    def bytes_after(self) -> int:
        return sum(r.bytes_after for r in self.layers)

    @property
    def min_sqnr_db(self) -> float | None:
        """The lowest measured SQNR over the quantized tensors (None: nothing was measured)."""
        s = [r.sqnr_db for r in self.layers if r.sqnr_db is not None and math.isfinite(r.sqnr_db)]
        return min(s) if s else None

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.quantize/1`` document; ``layers`` are the rows of DST.layers.json."""
        return {
            "schema": QUANTIZE_SCHEMA,
            "dst": str(self.dst),
            "scheme": self.scheme,
            "seconds": round(self.seconds, 3),
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "layers_path": None if self.layers_path is None else str(self.layers_path),
            "notes": list(self.notes),
            "calibration": list(self.calibration),
            "layers": [r.as_dict() for r in self.layers],
        }


@dataclass(frozen=True)
class ImatrixResult:
    """``imatrix``: the importance matrix written for ``quantize(imatrix=...)``."""

    path: Path
    tensors: int
    rows: int
    generations: int
    seconds: float
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.imatrix/1`` document (``rows``: per tensor, on average)."""
        return {
            "schema": IMATRIX_SCHEMA,
            "path": str(self.path),
            "tensors": self.tensors,
            "rows": self.rows,
            "generations": self.generations,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class PublishResult:
    """``publish``: the staged Hub folder, its files with sizes and, unless a dry run, the commit."""

    repo_id: str
    stage: Path
    files: Mapping[str, int]
    dry_run: bool
    url: str | None = None
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.publish/1`` document (``files``: name in the repo -> bytes)."""
        return {
            "schema": PUBLISH_SCHEMA,
            "repo_id": self.repo_id,
            "stage": str(self.stage),
            "dry_run": self.dry_run,
            "url": self.url,
            "files": dict(self.files),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ExportResult:
    """``export_onnx``: the ONNX folder written and how each graph was checked.

    ``parts``: one record per exported graph (``part``, ``family``, ``variant``, ``graph`` (its
    path inside ``path``), ``kind`` (fp32/fp16/bf16/int8), ``interface`` (named inputs and outputs,
    free dimensions) and ``errors`` (ONNX Runtime against torch at each validation shape))."""

    path: Path
    opset: int
    dtype: str
    quantize: str | None
    parts: tuple[Mapping[str, Any], ...] = ()

    @property
    def components(self) -> dict[str, Path]:
        """Each exported part's graph file."""
        return {str(p["part"]): self.path / str(p["graph"]) for p in self.parts}

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.export-onnx/1`` document."""
        return {
            "schema": EXPORT_SCHEMA,
            "path": str(self.path),
            "opset": self.opset,
            "dtype": self.dtype,
            "quantize": self.quantize,
            "parts": copy.deepcopy([dict(p) for p in self.parts]),
        }
