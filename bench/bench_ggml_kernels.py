"""Throughput of the torch GGUF kernels (weightsmith.quantize.ggml) against gguf's numpy quantizer.

For each ggml type: quantize a realistic weight (3072x3072 float32, Gaussian with 0.1% outliers) and a
few rows (8x4096), several times; report the median in M elements/s, with and without an importance
matrix, next to gguf 0.19.0's numpy quantizer where it has one (F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0,
Q5_1), and the dequantizers. ``--baseline REV`` also times the kernels of an older git revision (in a
subprocess, from ``git archive``), to show what an optimisation changed. Usage:

    .venv/bin/python bench/bench_ggml_kernels.py [--threads 1] [--repeats 5] [--types Q8_0,Q4_K]
        [--baseline 885d6b5] [--out reports/ggml_kernels.md]

The machine may be shared: medians are quoted, and the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from functools import partial
from io import BytesIO
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
ALL_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
             "IQ4_NL", "IQ4_XS"]  # fmt: skip
NUMPY_QUANT = {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
SHAPES = {"3072x3072": (3072, 3072), "8x4096": (8, 4096)}
if os.environ.get("BENCH_GGML_SMALL"):  # smoke runs of this script
    SHAPES = {"256x1024": (256, 1024), "8x4096": (8, 4096)}


def weights(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 0.02
    x[torch.rand(shape, generator=g) < 1e-3] *= 20
    return x


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: first-call allocations and lazy imports are not the steady state
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def repeats_for(qtype: str, n: int, base: int) -> int:
    """Fewer repeats for the slow searches on the big tensor (they take seconds each)."""
    slow = qtype.endswith("_K") or qtype.startswith("IQ")
    return max(3, base // 2) if slow and n > 1_000_000 else base


def measure_one(qtype: str, x: torch.Tensor, im: torch.Tensor | None, repeats: int) -> dict:
    """One row: our quantize (and, without imatrix, both dequantizers and gguf's quantizer)."""
    import gguf

    from weightsmith.quantize.ggml import dequantize, quantize

    n, shape = x.numel(), tuple(x.shape)
    row: dict = {"type": qtype, "shape": "x".join(map(str, shape)), "imatrix": im is not None}
    q = quantize(x, qtype, im)
    row["ours"] = n / median_time(partial(quantize, x, qtype, im), repeats) / 1e6
    if im is None:
        gt = gguf.GGMLQuantizationType[qtype]
        row["deq_ours"] = n / median_time(partial(dequantize, q, qtype, shape), repeats) / 1e6
        row["deq_numpy"] = n / median_time(partial(gguf.quants.dequantize, q.numpy(), gt), repeats) / 1e6
        if qtype in NUMPY_QUANT:
            row["numpy"] = n / median_time(partial(gguf.quants.quantize, x.numpy(), gt), repeats) / 1e6
    return row


def measure(types: list[str], repeats: int, imatrix: bool) -> list[dict]:
    """Rows of {type, shape, imatrix, ours, numpy, deq_ours, deq_numpy} in M elements/s."""
    from weightsmith.quantize.ggml import get_kernel

    rows = []
    for shape in SHAPES.values():
        x = weights(shape)
        im = torch.rand(shape[1], generator=torch.Generator().manual_seed(1)) + 0.1
        for t in types:
            if imatrix and not get_kernel(t).uses_imatrix:
                continue
            row = measure_one(t, x, im if imatrix else None, repeats_for(t, x.numel(), repeats))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def baseline(rev: str, types: list[str], repeats: int, threads: int) -> dict[tuple, float]:
    """Quantize throughput of revision ``rev``'s kernels, run from a git archive in a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        blob = subprocess.run(
            ["git", "archive", rev, "weightsmith"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        with tarfile.open(fileobj=BytesIO(blob)) as tf:
            tf.extractall(tmp, filter="data")
        env = dict(os.environ, PYTHONPATH=tmp)
        cmd = [sys.executable, __file__, "--child", "--no-imatrix", "--types", ",".join(types), "--repeats",
               str(repeats), "--threads", str(threads)]  # fmt: skip
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, cwd=tmp).stdout
    res = {}
    for row in json.loads(out):
        res[(row["type"], row["shape"], row["imatrix"])] = row["ours"]
    return res


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def report(rows: list[dict], base: dict, meta: dict) -> str:
    lines = [
        "# GGUF kernel throughput (bench/bench_ggml_kernels.py)",
        "",
        f"torch {meta['torch']} on {meta['cpu']} ({meta['cores']} cores), {meta['threads']} torch thread(s); "
        f"gguf {meta['gguf']}, numpy {meta['numpy']}. M elements/s, median of {meta['repeats']} runs "
        f"(3 for the searching types on the big tensor). Load average {meta['load_before']} before, "
        f"{meta['load_after']} after: other jobs shared the machine, so absolute figures are noisy; ratios "
        "measured back to back are the figures to compare.",
        "",
        "Every kernel here produces bytes identical to ggml's reference quantizer "
        "(tests/quantize/test_ggml_kernels.py).",
        "",
    ]
    base_col = f" | before ({meta['baseline']})" if base else ""
    lines += [
        "## Quantize",
        "",
        f"| type | shape | imatrix | ours{base_col} | gguf numpy | ours / numpy |",
        "|---|---|---|---|" + ("---|" if base else "") + "---|---|",
    ]
    for r in rows:
        b = base.get((r["type"], r["shape"], r["imatrix"])) if base else None
        ratio = f"{r['ours'] / r['numpy']:.1f}x" if r.get("numpy") else "-"
        bcell = f" | {fmt(b)}" if base else ""
        im = "yes" if r["imatrix"] else "no"
        lines.append(
            f"| {r['type']} | {r['shape']} | {im} | {fmt(r['ours'])}{bcell} | {fmt(r.get('numpy'))} | {ratio} |"
        )
    lines += ["", "## Dequantize", "", "| type | shape | ours | gguf numpy |", "|---|---|---|---|"]
    for r in rows:
        if not r["imatrix"]:
            lines.append(f"| {r['type']} | {r['shape']} | {fmt(r['deq_ours'])} | {fmt(r['deq_numpy'])} |")
    lines += ["", "## Targets", ""]
    big = [r for r in rows if r["shape"] == "3072x3072" and not r["imatrix"]]
    legacy = [r for r in big if r["type"] in {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"} and r.get("numpy")]
    for r in legacy:
        ratio = r["ours"] / r["numpy"]
        lines.append(
            f"- {r['type']}: {ratio:.1f}x gguf's numpy quantizer (target 5x): {'met' if ratio >= 5 else 'not met'}"
        )
    for r in big:
        if r["type"] == "Q4_K":
            ok = "met" if r["ours"] >= 15 else "not met"
            lines.append(f"- Q4_K: {fmt(r['ours'])} M elements/s (target 15): {ok}")
    lines += ["", "Reference points (reference/gguf.md, same kind of machine, one thread, ggml's C quantizer): "
              "Q8_0 138, Q4_0 370, Q6_K 19.0, Q5_K 9.2, Q4_K 7.3, Q3_K 49.2, Q2_K 9.1 M elements/s.", ""]  # fmt: skip
    if meta.get("notes"):
        lines += ["## Notes", "", meta["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(ALL_TYPES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--no-imatrix", action="store_true", help="skip the importance-matrix runs")
    ap.add_argument("--baseline", help="git revision whose kernels to time as 'before'")
    ap.add_argument("--out", default=str(ROOT / "reports" / "ggml_kernels.md"))
    ap.add_argument("--notes", default="", help="a paragraph appended to the report")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    types = a.types.split(",")
    if a.child:  # baseline mode: quantize timings only, JSON on stdout
        rows = measure(types, a.repeats, imatrix=False) + (
            [] if a.no_imatrix else measure(types, a.repeats, True)
        )
        print(json.dumps(rows))
        return
    import gguf

    meta = {
        "torch": torch.__version__,
        "gguf": getattr(gguf, "__version__", "?"),
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "repeats": a.repeats,
        "load_before": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "baseline": a.baseline,
        "notes": a.notes,
    }
    try:
        from importlib.metadata import version

        meta["gguf"] = version("gguf")
    except Exception:
        pass
    rows = measure(types, a.repeats, imatrix=False)
    if not a.no_imatrix:
        rows += measure(types, a.repeats, imatrix=True)
    base = baseline(a.baseline, types, a.repeats, torch.get_num_threads()) if a.baseline else {}
    meta["load_after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(rows, base, meta))
    payload = {"meta": meta, "rows": rows, "baseline": [{"type": k[0], "shape": k[1], "imatrix": k[2], "ours": v}
                                                        for k, v in base.items()]}  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(payload, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
