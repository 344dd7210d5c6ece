"""What the scoring verbs return: ``verify`` (metrics per candidate, gate outcomes) and
``sensitivity`` (layers ranked). Typed views over the CLI's ``--json`` documents
(``weightsmith.verify/1``, ``weightsmith.sensitivity/1``), which ``to_json()`` returns as they are.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class GateOutcome:
    """One gate (``'psnr>=30'``, or the built-in ``finite`` / ``frames`` checks) on one candidate.

    ``value``: the measured value as shown; ``applicable`` False when the run could not measure
    the metric (e.g. frame metrics without a VAE), which counts as passed."""

    candidate: str
    gate: str
    metric: str
    value: str
    passed: bool
    applicable: bool


@dataclass(frozen=True)
class CandidateScores:
    """One candidate's scores: ``metrics`` the worst over prompts and seeds, ``mean`` their mean
    (None: not measured or not finite), ``failures`` checks that failed on their own (NaN/Inf,
    frames gone black)."""

    label: str
    loader: str
    paths: Mapping[str, str]
    bytes: int
    exact: bool
    passed: bool
    metrics: Mapping[str, float | None]
    mean: Mapping[str, float | None]
    gates: tuple[GateOutcome, ...]
    failures: tuple[str, ...]


@dataclass(frozen=True)
class VerifyResult:
    """``verify``: every candidate scored against the baseline, and the gates' outcomes.

    ``passed`` is False when any gate failed; ``raise_for_gates()`` turns that into
    ``GateFailed`` (what the command line exits 1 with). ``report_path``: the report.json written
    when ``report=`` was given (not part of the JSON document)."""

    passed: bool
    candidates: tuple[CandidateScores, ...]
    gates: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float
    report_path: Path | None = None
    document: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: the run's internal record, for the command line's text tables (not public)
    _internal: Any = field(default=None, repr=False, compare=False)

    @staticmethod
    def of(doc: Mapping[str, Any], report_path: Path | None = None, internal: Any = None) -> VerifyResult:
        cands = tuple(
            CandidateScores(
                label=c["label"],
                loader=c["loader"],
                paths=dict(c["paths"]),
                bytes=int(c["bytes"]),
                exact=bool(c["exact"]),
                passed=bool(c["passed"]),
                metrics=dict(c["metrics"]),
                mean=dict(c["mean"]),
                gates=tuple(
                    GateOutcome(
                        c["label"], g["gate"], g["metric"], str(g["value"]), g["passed"], g["applicable"]
                    )
                    for g in c["gates"]
                ),
                failures=tuple(c["failures"]),
            )
            for c in doc["candidates"]
        )
        return VerifyResult(
            passed=bool(doc["passed"]),
            candidates=cands,
            gates=tuple(doc["gates"]),
            notes=tuple(doc["notes"]),
            seconds=float(doc["seconds"]),
            report_path=report_path,
            document=doc,
            _internal=internal,
        )

    @property
    def failed_gates(self) -> list[GateOutcome]:
        return [g for c in self.candidates for g in c.gates if not g.passed]

    def raise_for_gates(self) -> None:
        """Raise ``GateFailed`` naming every failed gate (nothing when all passed)."""
        from weightsmith.errors import GateFailed

        bad = self.failed_gates
        if not bad:
            return
        named = "; ".join(f"{g.candidate}: {g.gate} ({g.value})" for g in bad[:4])
        more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
        raise GateFailed(f"{len(bad)} verification gate(s) failed: {named}{more}", hint="see the table above")

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.verify/1`` document (as ``weightsmith verify --json`` prints it)."""
        return copy.deepcopy(dict(self.document))


@dataclass(frozen=True)
class LayerSensitivity:
    """One Linear layer quantized alone: ``names`` are what ``quantize(keep=...)`` matches;
    SQNRs in dB (None: not finite)."""

    rank: int
    module: str
    names: tuple[str, ...]
    type: str
    params: int
    weight_sqnr_db: float | None
    output_sqnr_db: float | None
    output_cosine: float | None


@dataclass(frozen=True)
class SensitivityResult:
    """``sensitivity``: the transformer's Linear layers, most sensitive first, and the suggested
    ``keep`` globs. ``report_path``: sensitivity.json when ``report=`` was given."""

    model: str
    family: str
    variant: str
    scheme: str
    layers: tuple[LayerSensitivity, ...]
    suggested_keep: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float
    report_path: Path | None = None
    document: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: the run's internal record, for the command line's text table (not public)
    _internal: Any = field(default=None, repr=False, compare=False)

    @staticmethod
    def of(
        doc: Mapping[str, Any], report_path: Path | None = None, internal: Any = None
    ) -> SensitivityResult:
        layers = tuple(
            LayerSensitivity(
                rank=int(r["rank"]),
                module=r["module"],
                names=tuple(r["names"]),
                type=r["type"],
                params=int(r["params"]),
                weight_sqnr_db=r["weight_sqnr_db"],
                output_sqnr_db=r["output_sqnr_db"],
                output_cosine=r["output_cosine"],
            )
            for r in doc["layers"]
        )
        return SensitivityResult(
            model=doc["model"],
            family=doc["family"],
            variant=doc["variant"],
            scheme=doc["scheme"],
            layers=layers,
            suggested_keep=tuple(doc["suggested_keep"]),
            notes=tuple(doc["notes"]),
            seconds=float(doc["seconds"]),
            report_path=report_path,
            document=doc,
            _internal=internal,
        )

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.sensitivity/1`` document."""
        return copy.deepcopy(dict(self.document))
