"""Opt-in: the ONNX exporter's external-data path on a synthetic model larger than protobuf's 2 GB.

A stack of float32 Linear layers (~2.3 GB of weights) goes through ``weightsmith.onnx.trace``'s
``export_graph`` (the exporter every component uses), which must write one ``model.onnx.data``
beside the graph; ONNX Runtime then loads it and its output is compared with torch. Peak anonymous
memory is sampled during the export: with the weights held once by torch, a naive exporter that
serializes an in-memory copy would peak near twice the weights. Writes reports/onnx_export.md.

    .venv/bin/python bench/bench_onnx_export.py [--gib 2.3] [--out /tmp/onnx-bench]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memlib import PeakSampler, mb  # noqa: E402

from weightsmith.families.export import ExportPlan, Forward, OutputSpec  # noqa: E402
from weightsmith.families.inputs import InputSpec  # noqa: E402
from weightsmith.onnx.runtime import session  # noqa: E402
from weightsmith.onnx.trace import export_graph, weight_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 8192  # one layer = 256 MiB of float32


class Stack(nn.Module):
    def __init__(self, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(layers))
        for layer in self.layers:  # keep activations in range through the stack
            nn.init.normal_(layer.weight, std=WIDTH**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.3)
    ap.add_argument("--out", default="/tmp/weightsmith-onnx-bench")
    args = ap.parse_args()
    layers = max(1, round(args.gib * 2**30 / (WIDTH * WIDTH * 4)))
    torch.manual_seed(0)
    model = Stack(layers).eval()
    weights = weight_bytes(model)
    spec = InputSpec("x", ("batch", WIDTH))
    plan = ExportPlan(
        "transformer", (spec,), (OutputSpec("y", ("batch", WIDTH)),), {"batch": 2}, {"batch": 3}
    )
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    graph = out / "model.onnx"
    t0 = time.perf_counter()
    with PeakSampler() as peak:
        export_graph(Forward(model, ["x"], lambda m, x: m(x["x"])), plan, graph)
    secs = time.perf_counter() - t0
    data = Path(str(graph) + ".data")
    files = sorted(p.name for p in out.iterdir())
    x = torch.randn(3, WIDTH)
    with torch.no_grad():
        want = model(x).numpy()
    got = session(graph).run(None, {"x": x.numpy()})[0]
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    rows = [
        (
            "weights",
            f"{layers} x Linear({WIDTH}, {WIDTH}) float32 = {mb(weights)} ({weights / 2**30:.2f} GiB)",
        ),
        ("files written", ", ".join(files)),
        ("graph (.onnx)", mb(graph.stat().st_size)),
        ("external data", mb(data.stat().st_size) if data.exists() else "none"),
        ("anon RSS before export", mb(peak.base_anon)),
        ("peak anon RSS during export", mb(peak.peak_anon)),
        ("peak above the weights already held", mb(peak.peak_anon - peak.base_anon)),
        ("export time", f"{secs:.0f} s"),
        ("ORT vs torch, batch 3 (max abs / max |ref|)", f"{rel:.2e}"),
    ]
    text = [
        "# ONNX export: external data on a model over 2 GB",
        "",
        "`bench/bench_onnx_export.py` (opt-in). A synthetic stack of float32 Linear layers, exported",
        "through `weightsmith.onnx.trace.export_graph` (the path every component takes), loaded by",
        "ONNX Runtime and compared with torch at a batch other than the traced one.",
        "",
        "| what | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        "",
        "Peak memory is the process's anonymous RSS sampled every 5 ms (bench/memlib.py); the",
        "weights are held once by torch before the export starts ('before export').",
    ]
    report = ROOT / "reports" / "onnx_export.md"
    report.write_text("\n".join(text) + "\n")
    print("\n".join(text))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
