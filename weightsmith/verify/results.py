"""What a verification found: per-candidate scores, gates, the JSON document and the summary table.

These are plain records: the runner fills them in per rank, ``merge`` joins the ranks, and
``aggregate`` reduces each candidate's items to its worst and mean metrics before the gates run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from weightsmith.errors import GateFailed
from weightsmith.verify.gates import Gate, GateResult, failure_table, format_value
from weightsmith.verify.metrics import METRICS, PROMPT_METRICS, ItemScore, jsonable, mean, worst
from weightsmith.verify.settings import GenerationSettings, device_kind

SCHEMA = "weightsmith.verify/1"


@dataclass
class CandidateResult:
    label: str
    loader: str
    paths: dict[str, str]
    bytes: int
    size_ratio: float
    items: list[ItemScore] = field(default_factory=list)
    load_seconds: float = 0.0
    preview: np.ndarray | None = None
    worst: dict[str, float | None] = field(default_factory=dict)
    mean: dict[str, float | None] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f"{it.prompt}/seed{it.seed}: {f}" for it in self.items for f in it.failures]

    @property
    def exact(self) -> bool:
        return bool(self.items) and all(it.exact for it in self.items)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


@dataclass
class VerifyResult:
    baseline: dict[str, Any]
    settings: dict[str, Any]
    scheduler: dict[str, Any]
    notes: list[str]
    candidates: list[CandidateResult]
    gates: list[Gate]
    frames: bool
    world_size: int = 1
    cache: dict[str, Any] = field(default_factory=dict)
    baseline_preview: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def gate_results(self) -> list[GateResult]:
        return [g for c in self.candidates for g in c.gates]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "passed": self.passed,
            "baseline": self.baseline,
            "settings": self.settings,
            "scheduler": self.scheduler,
            "frames_decoded": self.frames,
            "notes": self.notes,
            "gates": [g.text for g in self.gates],
            "world_size": self.world_size,
            "cache": self.cache,
            "seconds": round(self.seconds, 3),
            "metrics": {
                k: {"unit": v.unit, "higher_is_better": v.higher_is_better, "about": v.about}
                for k, v in METRICS.items()
            },
            "candidates": [
                {
                    "label": c.label,
                    "loader": c.loader,
                    "paths": c.paths,
                    "bytes": c.bytes,
                    "exact": c.exact,
                    "passed": c.passed,
                    "load_seconds": round(c.load_seconds, 3),
                    "metrics": {k: jsonable(v) for k, v in c.worst.items()},
                    "mean": {k: jsonable(v) for k, v in c.mean.items()},
                    "failures": c.failures,
                    "gates": [
                        {
                            "gate": g.check,
                            "metric": g.metric,
                            "value": g.value,
                            "passed": g.passed,
                            "applicable": g.applicable,
                        }
                        for g in c.gates
                    ],
                    "items": [it.as_dict() for it in c.items],
                }
                for c in self.candidates
            ],
        }


def merge(per_rank: list[list[CandidateResult]]) -> list[CandidateResult]:
    merged = per_rank[0]
    for other in per_rank[1:]:
        for m, o in zip(merged, other):
            m.items.extend(o.items)
            m.load_seconds = max(m.load_seconds, o.load_seconds)
            if m.preview is None:
                m.preview = o.preview
    for m in merged:
        m.items.sort(key=lambda it: (it.seed, it.prompt))
    return merged


def aggregate(c: CandidateResult) -> None:
    for name, info in METRICS.items():
        if name in ("size_ratio", "time_ratio"):
            continue
        vals = [it.metrics.get(name) for it in c.items]
        c.worst[name] = worst(vals, info.higher_is_better)
        c.mean[name] = mean(vals)
    c.worst["size_ratio"] = c.mean["size_ratio"] = c.size_ratio
    bs = sum(it.base_seconds for it in c.items)
    tr = sum(it.cand_seconds for it in c.items) / bs if bs > 0 else None
    c.worst["time_ratio"] = c.mean["time_ratio"] = tr
    for k in [k for k, v in c.worst.items() if v is None and k in ("lpips", *PROMPT_METRICS)]:
        c.worst.pop(k)
        c.mean.pop(k, None)


def settings_dict(s: GenerationSettings, device: torch.device) -> dict[str, Any]:
    return {
        "height": s.height,
        "width": s.width,
        "frames": s.frames,
        "steps": s.steps,
        "guidance": s.guidance,
        "seeds": list(s.seeds),
        "dtype": s.dtype,
        "device": device_kind(device),
        "offload": s.offload,
        "vae_tiling": s.vae_tiling,
        "image": s.image,
        "prompts": s.prompts,
    }


def check_gates(result: VerifyResult) -> None:
    """Raise GateFailed (exit 1) naming every failed gate and check."""
    bad = [g for g in result.gate_results() if not g.passed]
    if not bad:
        return
    named = "; ".join(f"{g.candidate}: {g.check} ({g.value})" for g in bad[:4])
    more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    raise GateFailed(f"{len(bad)} verification gate(s) failed: {named}{more}", hint="see the table above")


def summary_table(result: VerifyResult) -> str:
    """A plain-text table of the main metrics per candidate."""
    cols = ["latent_sqnr", "latent_cosine"] + (
        ["psnr", "ssim", "flicker"] if result.frames else ["latent_psnr"]
    )
    if any(k in c.worst for c in result.candidates for k in PROMPT_METRICS):
        cols += list(PROMPT_METRICS)
    cols += ["size_ratio", "time_ratio"]
    head = ["candidate", *cols, "result"]
    rows = []
    for c in result.candidates:
        res = "exact" if c.exact and c.passed else ("pass" if c.passed else "FAIL")
        rows.append([c.label, *[format_value(c.worst.get(k)) for k in cols], res])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head)] + [fmt.format(*r) for r in rows]
    table = failure_table(result.gate_results())
    if table:
        lines += ["", "failed:", table]
    return "\n".join(lines)
