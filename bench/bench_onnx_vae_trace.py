"""Where the time of a tiny VAE's ONNX export goes (what the VAE export tests of `make test` cost).

For each registered VAE part (decoder, encoder) of the export-test models
(``Component.tiny_export_config``; ``--tiny``: the tiny fixtures'), on the module and plan
``weightsmith.onnx.trace`` uses: ``torch.export.export`` with the plan's dynamic dims, then
``torch.onnx.export`` of that exported program (the exporter's decompositions plus the onnxscript
translation), and for comparison the whole ``torch.onnx.export`` with every dimension static.
The aten node count is what the cost scales with. (cProfile is not used: its per-call overhead
inflates sympy-heavy symbolic-shape code several times over.) Prints a markdown table; the
sections of reports/onnx_vae_trace.md quote its runs (with the load they ran under).

    .venv/bin/python bench/bench_onnx_vae_trace.py [--family F] [--part P] [--tiny]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from weightsmith.families import components
from weightsmith.families.inputs import example_inputs
from weightsmith.families.tiny_init import build_tiny
from weightsmith.onnx.trace import _quiet, _uncached_fake_dispatch, dynamic_shapes

ROOT = Path(__file__).resolve().parent.parent


def measure(comp, part: str, tiny: bool = False) -> dict:
    variant = comp.variants[0]
    cfg = comp.tiny_config(variant) if tiny else comp.tiny_export_config(variant)
    model = build_tiny(lambda **kw: comp.instantiate(variant, kw), cfg, 0, comp.tiny_init).eval()
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    plan = comp.export_plan(config, variant, part)
    module = comp.export.module(model, plan)
    args = tuple(example_inputs(plan.inputs, plan.sizes).values())
    row: dict = {"family": comp.family, "part": part, "dynamic": ",".join(plan.dynamic())}
    onnx_args = {"dynamo": True, "optimize": False, "verbose": False, "report": False, "opset_version": 18}
    with comp.export.patched(model), torch.no_grad(), _quiet(), _uncached_fake_dispatch():
        t = time.perf_counter()
        ep = torch.export.export(module, args, dynamic_shapes=(dynamic_shapes(plan),))
        row["export_s"] = time.perf_counter() - t
        row["nodes"] = sum(1 for n in ep.graph.nodes if n.op == "call_function")
        t = time.perf_counter()
        torch.onnx.export(ep, args, **onnx_args)
        row["onnx_from_program_s"] = time.perf_counter() - t
        t = time.perf_counter()
        torch.onnx.export(module, args, **onnx_args)
        row["static_total_s"] = time.perf_counter() - t
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family")
    ap.add_argument("--part")
    ap.add_argument("--tiny", action="store_true", help="the tiny fixtures, not the export-test models")
    a = ap.parse_args()
    rows = []
    for comp in components():
        if comp.export is None or comp.component == "transformer" or a.family not in (None, comp.family):
            continue
        for part in comp.export.parts:
            if a.part in (None, part):
                rows.append(measure(comp, part, a.tiny))
                print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    lines = [
        "# Tiny VAE ONNX export: where the time goes",
        "",
        f"bench/bench_onnx_vae_trace.py; load average {load:.1f} at the end of the run "
        f"({os.cpu_count()} cores, shared). Seconds per phase, one run each.",
        "",
        "| family | part | dynamic | aten nodes | torch.export s | torch.onnx.export(program) s "
        "| dynamic total s | all-static torch.onnx.export s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['part']} | {r['dynamic']} | {r['nodes']} | {r['export_s']:.1f} "
            f"| {r['onnx_from_program_s']:.1f} | {r['export_s'] + r['onnx_from_program_s']:.1f} "
            f"| {r['static_total_s']:.1f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
