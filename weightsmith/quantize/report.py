"""What a quantize run reports, for GGUF and the Linear schemes alike: one record per tensor, one
SQNR measure, the printed summary and ``DST.layers.json``."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from weightsmith.io.atomic import atomic_file

if TYPE_CHECKING:
    import torch

LAYERS_SCHEMA = "weightsmith.quantize-layers/1"
SQNR_CHUNK = 1 << 20


@dataclass
class LayerRecord:
    """One tensor of the output: its type (a ggml type, a scheme or a dtype), why, bytes and SQNR."""

    name: str
    shape: tuple[int, ...]
    qtype: str
    reason: str
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None = None
    imatrix: bool = False
    matmul: str | None = None  # ComfyUI files: how the layer computes (input_scale or full precision, why)

    def as_dict(self) -> dict[str, object]:
        """The row of ``DST.layers.json`` (SQNR rounded; infinite or NaN written as null)."""
        db = self.sqnr_db
        return {
            "name": self.name,
            "shape": list(self.shape),
            "type": self.qtype,
            "reason": self.reason,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "sqnr_db": None if db is None or not math.isfinite(db) else round(db, 3),
            "imatrix": self.imatrix,
            **({"matmul": self.matmul} if self.matmul is not None else {}),
        }


@dataclass
class QuantizeResult:
    dst: Path
    scheme: str
    layers: list[LayerRecord] = field(default_factory=list)
    seconds: float = 0.0
    report_path: Path | None = None
    #: what the run changed or left out on its own (e.g. imatrix entries it could not use)
    notes: list[str] = field(default_factory=list)
    #: seconds per phase (read, quantize, write, hash...), summed over tensors; phases run side by
    #: side in a pipeline, so they may add up to more than ``seconds``
    phases: dict[str, float] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        by_type: dict[str, list[LayerRecord]] = {}
        for r in self.layers:
            by_type.setdefault(r.qtype, []).append(r)
        before = sum(r.bytes_before for r in self.layers)
        after = sum(r.bytes_after for r in self.layers)
        lines = [
            f"{self.scheme}: {len(self.layers)} tensors, {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB "
            f"({after / max(before, 1):.1%}) in {self.seconds:.1f} s"
        ]
        lines.append(f"  {'type':8s} {'tensors':>7s} {'MB':>10s} {'min SQNR dB':>12s} {'mean SQNR dB':>13s}")
        for qt, rs in sorted(by_type.items()):
            s = [r.sqnr_db for r in rs if r.sqnr_db is not None]
            mn = f"{min(s, key=_worst_first):12.2f}" if s else f"{'-':>12s}"
            me = f"{sum(s) / len(s):13.2f}" if s else f"{'-':>13s}"
            lines.append(f"  {qt:8s} {len(rs):7d} {sum(r.bytes_after for r in rs) / 1e6:10.2f} {mn} {me}")
        scored = [r for r in self.layers if r.sqnr_db is not None]
        for r in sorted(scored, key=lambda r: _worst_first(r.sqnr_db))[:3]:  # type: ignore[arg-type]
            lines.append(f"  lowest SQNR: {r.name} {r.qtype} {r.sqnr_db:.2f} dB")
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.phases:
            busy = ", ".join(f"{k} {v:.2f} s" for k, v in self.phases.items())
            lines.append(f"  phases (overlapping): {busy}")
        if self.report_path:
            lines.append(f"  per-layer table: {self.report_path}")
        return lines


def _worst_first(db: float) -> float:
    """Sort key for SQNR: NaN (a tensor that could not be measured) counts as the worst of all."""
    return -math.inf if math.isnan(db) else db


@dataclass
class Sqnr:
    """Signal and noise energy summed over a tensor's pieces; ``db`` is the one SQNR definition
    (inf when identical, -inf for a zero signal with noise)."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, signal: float, noise: float) -> None:
        self.signal += signal
        self.noise += noise

    @property
    def db(self) -> float:
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical).

    Summed in float64 over chunks of a million elements, so its temporaries stay a few MB whatever
    the tensor's size (whole-tensor float64 copies were the largest allocation of a GGUF run).
    """
    import torch

    r, a = ref.reshape(-1), approx.reshape(-1)
    acc = Sqnr()
    for i in range(0, r.numel(), SQNR_CHUNK):
        rc = r[i : i + SQNR_CHUNK].to(torch.float64)
        signal = float(rc.square().sum())
        acc.add(signal, float(rc.sub_(a[i : i + SQNR_CHUNK].to(torch.float64)).square_().sum()))
    return acc.db


def layers_path(dst: Path) -> Path:
    """Where the per-layer table of ``dst`` goes."""
    return dst.with_name(dst.name + ".layers.json")


def write_layer_report(dst: Path, result: QuantizeResult, path: Path | None = None) -> Path:
    """The per-layer table (scheme, SQNR, bytes before and after) as JSON beside the output.

    ``path``: where to write it (a staged temporary from ``outputs.staged_outputs``); by default
    DST.layers.json itself, replaced atomically."""
    body: dict[str, object] = {
        "schema": LAYERS_SCHEMA,
        "file": dst.name,
        "scheme": result.scheme,
        "layers": [r.as_dict() for r in result.layers],
    }
    if result.notes:
        body["notes"] = list(result.notes)
    text = json.dumps(body, indent=1, allow_nan=False) + "\n"
    if path is not None:
        path.write_text(text)
        return layers_path(dst)
    target = layers_path(dst)
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_text(text)
    return target
