"""`weightsmith demo`: the main job on built-in tiny models, end to end, with no downloads.

Today it builds a tiny model of every family, component and variant from the real diffusers
classes, writes each in its Diffusers and original/SAT layouts, converts each back, checks the
round trip bit for bit, and inspects every file; later stages (quantize, verify) extend it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
import torch

from weightsmith.convert.run import convert
from weightsmith.families import components
from weightsmith.inspect import describe
from weightsmith.io import open_single
from weightsmith.tiny import Fixture, save_fixture


def run_demo(out: str | Path) -> None:
    out = Path(out)
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    for comp in components():
        for variant in comp.variants:
            src = save_fixture(
                Fixture(comp.family, comp.component, variant, "diffusers", "diffusers-folder"), models
            )
            for layout in comp.layouts:
                if layout == "diffusers":
                    continue
                suffix = "" if layout == "sat" and comp.component == "transformer" else ".safetensors"
                if layout == "sat" and comp.component != "transformer":
                    suffix = ".pt"
                mid = models / f"{src.name}-to-{layout}{suffix}"
                back = models / f"{src.name}-to-{layout}-back"
                convert(src, mid, layout, overwrite=True, progress=False)
                convert(mid, back, "diffusers", overwrite=True, progress=False)
                exact = _same(src, back)
                for path in (src, mid):
                    r = describe(path)
                    det = r["detection"] or {}
                    rows.append(
                        {
                            "file": str(path.relative_to(out)),
                            "container": r["container"],
                            "family": det.get("family"),
                            "component": det.get("component"),
                            "layout": det.get("layout"),
                            "variant": det.get("variant"),
                            "parameters": r["parameters"],
                            "round_trip_exact": exact,
                        }
                    )
    elapsed = time.perf_counter() - t0
    _report(out, rows, elapsed)


def _same(a: Path, b: Path) -> bool:
    x, y = open_single(a), open_single(b)
    if sorted(x.keys()) != sorted(y.keys()):
        return False
    return all(x.get(k).dtype == y.get(k).dtype and torch.equal(x.get(k), y.get(k)) for k in x)


def _report(out: Path, rows: list[dict], elapsed: float) -> None:
    head = "| file | container | family | component | layout | variant | params | round trip |"
    lines = ["# weightsmith demo: tiny models of every family", "", head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['file']} | {r['container']} | {r['family']} | {r['component']} | {r['layout']} | "
            f"{r['variant']} | {r['parameters']:,} | {'bit-exact' if r['round_trip_exact'] else 'DIFFERS'} |"
        )
    lines += ["", f"{len(rows)} files in {elapsed:.1f} s."]
    (out / "inventory.md").write_text("\n".join(lines) + "\n")
    (out / "inventory.json").write_text(json.dumps(rows, indent=2) + "\n")
    click.echo("\n".join(lines))
    bad = [r for r in rows if not r["round_trip_exact"]]
    if bad:
        from weightsmith.errors import ConversionError

        raise ConversionError(f"{len(bad)} round trips were not bit-exact, e.g. {bad[0]['file']}")
    click.echo(f"report: {out / 'inventory.md'}")
