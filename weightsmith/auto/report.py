"""What an ``auto:FORMAT`` run reports: JSON for scripts, a Markdown table, and an HTML page with
the size-vs-fidelity frontier (every uniform recipe on the same plot)."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path
from typing import Any

from weightsmith.auto.costs import to_db
from weightsmith.auto.search import SCHEMA, AutoResult
from weightsmith.io.atomic import atomic_file
from weightsmith.verify.metrics import jsonable


def _db(v: float) -> float | None:
    return jsonable(round(v, 3) if math.isfinite(v) else v)


def to_json(r: AutoResult) -> dict[str, Any]:
    final = r.final
    units = {u.name: u for u in r.layout.units}
    return {
        "schema": SCHEMA,
        "dst": str(r.dst),
        "scheme": r.scheme,
        "family": r.family,
        "variant": r.variant,
        "targets": r.targets,
        "max_size": r.max_size,
        "passed": final is not None,
        "bytes": final.bytes if final else None,
        "fixed_bytes": r.layout.fixed_bytes,  # predicted bytes of the tensors no search touches
        "predicted_output_sqnr_db": _db(final.predicted_db) if final else None,
        "metrics": {k: jsonable(v) for k, v in final.metrics.items()} if final else None,
        "verify_report": str(r.verify_report) if r.verify_report else None,
        "additivity": {
            "assumption": "the output error powers of layers quantized together add up",
            "about": "predicted: the sum of each chosen layer's error measured alone; measured: all at once",
            "predicted_db": _db(r.timing.get("additivity_predicted_db", math.nan)),
            "measured_db": _db(r.timing.get("additivity_measured_db", math.nan)),
        },
        "timing": {k: round(v, 3) for k, v in r.timing.items()},
        "notes": r.notes + r.layout.notes,
        "layers": [
            {
                "name": n,
                "type": t,
                "bytes": units[n].sizes.get(t),
                "output_sqnr_db": _db(to_db(r.costs.measured(n, t) or r.costs.noise(n, t))),
                "estimated_db": _db(to_db(r.costs.noise(n, t))),
                "candidates": {c: _db(to_db(r.costs.noise(n, c))) for c in units[n].candidates},
            }
            for n, t in sorted(r.choice.items())
        ],
        "attempts": [
            {
                "phase": a.phase,
                "aim_db": _db(a.aim_db),
                "predicted_db": _db(a.predicted_db),
                "bytes": a.bytes,
                "passed": a.passed,
                "metrics": {k: jsonable(v) for k, v in a.metrics.items()},
                "seconds": round(a.seconds, 3),
            }
            for a in r.attempts
        ],
        "uniform": {k: {"bytes": b, "predicted_db": _db(to_db(n))} for k, (b, n) in r.uniform.items()},
        "frontier": [{"bytes": b, "predicted_db": _db(to_db(n))} for b, n in r.frontier],
    }


def format_summary(r: AutoResult) -> str:
    lines = []
    final = r.final
    if final is None:
        lines.append(f"{r.scheme}: no mix passed {' '.join(r.targets)} in {len(r.attempts)} tries")
    else:
        counts: dict[str, int] = {}
        for t in r.choice.values():
            counts[t] = counts.get(t, 0) + 1
        mix = ", ".join(f"{n} x {t}" for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(f"{r.scheme}: {final.bytes} bytes ({mix}); {len(r.attempts)} tries")
    for i, a in enumerate(r.attempts, 1):
        shown = " ".join(
            f"{k}={a.metrics[k]:.2f}" for k in ("latent_sqnr", "psnr", "ssim") if a.metrics.get(k) is not None
        )
        verdict = "pass" if a.passed else "fail"
        how = f"aim {a.aim_db:.2f} dB" if a.phase == "aimed" else a.phase
        lines.append(
            f"  try {i}: {how}, predicted {a.predicted_db:.2f} dB, {a.bytes} bytes, {shown}: {verdict}"
        )
    t = r.timing
    if "additivity_measured_db" in t:
        lines.append(
            f"  additivity: predicted {t['additivity_predicted_db']:.2f} dB, measured "
            f"{t['additivity_measured_db']:.2f} dB with every layer quantized at once"
        )
    lines.append(f"  search {t.get('total_seconds', 0):.1f} s (costs {t.get('costs_seconds', 0):.1f} s)")
    lines += [f"  note: {n}" for n in r.notes]
    return "\n".join(lines)


def write_auto_report(folder: str | Path, r: AutoResult) -> Path:
    """auto.json, auto.md and auto.html in ``folder``."""
    from weightsmith.verify.report import svg

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = to_json(r)
    with atomic_file(folder / "auto.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    table = ["| layer | type | bytes | output SQNR alone (dB) |", "|---|---|---|---|"]
    table += [
        f"| {row['name']} | {row['type']} | {row['bytes']} | {row['output_sqnr_db']} |"
        for row in data["layers"]
    ]
    md = [f"# {r.scheme}: {r.family} {r.variant}", "", "```", format_summary(r), "```", "", *table, ""]
    with atomic_file(folder / "auto.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    pts: list[tuple[str, float, float | None, int]] = []
    for k, (b, n) in sorted(r.uniform.items()):
        pts.append((k, b / 1e6, _finite(to_db(n)), 0))
    for b, n in r.frontier:
        pts.append(("", b / 1e6, _finite(to_db(n)), 1))
    for i, a in enumerate(r.attempts, 1):
        pts.append((f"try {i}" + (" (pass)" if a.passed else ""), a.bytes / 1e6, _finite(a.predicted_db), 2))
    chart = svg.scatter(
        pts,
        "size vs predicted output SQNR (probes)",
        "MB",
        "dB",
        legend=["uniform recipes", "auto frontier", "verified tries"],
    )
    body = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>auto</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:24px}</style></head><body>"
        f"<h1>{escape(r.scheme)}: {escape(r.family)} {escape(r.variant)}</h1>"
        f"<pre>{escape(format_summary(r))}</pre>{chart}<pre>{escape(chr(10).join(table))}</pre></body></html>\n"
    )
    path = folder / "auto.html"
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(body)
    return path


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None
