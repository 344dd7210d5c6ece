"""Throughput of the GGUF kernels (weightsmith.kernels.ggml) against gguf's numpy quantizer.

For each ggml type: quantize a realistic weight (3072x3072 float32, Gaussian with 0.1% outliers) and a
few rows (8x4096), with and without an importance matrix: ``ours`` is what ``quantize`` runs by default
(the fused C kernels on the CPU where the type has one), ``torch`` the torch kernels
(``backend="torch"``, what a GPU runs), next to gguf 0.19.0's numpy quantizer where it has one (F16,
BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) and, with ``--baseline REV``, next to the kernels of an older git
revision (loaded in-process from ``git archive`` as a separate package). The
contenders run back to back in every round, so they see the same machine load; medians of the rounds
are reported, as wall-clock and as process CPU time (steadier when other jobs share the cores).
Dequantization is timed the same way. Usage:

    .venv/bin/python bench/bench_ggml_kernels.py [--threads 1] [--repeats 5] [--types Q8_0,Q4_K]
        [--baseline 885d6b5] [--out reports/ggml_kernels.md]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from functools import partial
from io import BytesIO
from pathlib import Path

import gguf
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
ALL_TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
             "IQ4_NL", "IQ4_XS"]  # fmt: skip
NUMPY_QUANT = {"F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"}
LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
SHAPES = {"3072x3072": (3072, 3072), "8x4096": (8, 4096)}
if os.environ.get("BENCH_GGML_SMALL"):  # smoke runs of this script
    SHAPES = {"256x1024": (256, 1024), "8x4096": (8, 4096)}


def weights(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 0.02
    x[torch.rand(shape, generator=g) < 1e-3] *= 20
    return x


def load_baseline(rev: str, tmp: str):
    """The kernels package of revision ``rev`` (``weightsmith/kernels/ggml``, or
    ``weightsmith/quantize/ggml`` before the kernels moved), imported as ``ggml_before``."""
    for where in ("weightsmith/kernels/ggml", "weightsmith/quantize/ggml"):
        proc = subprocess.run(["git", "archive", rev, where], cwd=ROOT, capture_output=True)
        if proc.returncode == 0:
            break
    else:
        raise SystemExit(f"revision {rev} has no GGUF kernels package")
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tf:
        tf.extractall(Path(tmp) / "src", filter="data")
    (Path(tmp) / "pkgs").mkdir()
    os.rename(Path(tmp) / "src" / where, Path(tmp) / "pkgs/ggml_before")
    sys.path.insert(0, str(Path(tmp) / "pkgs"))
    return importlib.import_module("ggml_before")


def race(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per contender, timed back to back in each round."""
    for fn in contenders.values():
        fn()  # warm-up: first-call allocations and lazy imports are not the steady state
    wall: dict[str, list[float]] = {k: [] for k in contenders}
    cpu: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k])} for k in contenders}


def repeats_for(qtype: str, n: int, base: int) -> int:
    """Fewer rounds for the slow searches on the big tensor (they take seconds each)."""
    slow = qtype.endswith("_K") or qtype.startswith("IQ")
    return max(3, base // 2) if slow and n > 1_000_000 else base


def measure(types: list[str], repeats: int, imatrix: bool, before) -> list[dict]:
    """Rows of M elements/s: quantize (ours, before, numpy) and, without imatrix, dequantize."""
    from weightsmith.kernels.ggml import dequantize, get_kernel, native, quantize

    rows = []
    for name, shape in SHAPES.items():
        x = weights(shape)
        xn = x.numpy()
        n = x.numel()
        im_all = torch.rand(shape[1], generator=torch.Generator().manual_seed(1)) + 0.1
        for t in types:
            if imatrix and not get_kernel(t).uses_imatrix:
                continue
            im = im_all if imatrix else None
            gt = gguf.GGMLQuantizationType[t]
            r = repeats_for(t, n, repeats)
            q = quantize(x, t, im)
            quant = {"ours": partial(quantize, x, t, im)}
            if t in (native.IMATRIX_TYPES if imatrix else native.NATIVE_TYPES) and native.library():
                quant["torch"] = partial(quantize, x, t, im, backend="torch")
            if before is not None:
                quant["before"] = partial(before.quantize, x, t, im)
            if t in NUMPY_QUANT and not imatrix:
                quant["numpy"] = partial(gguf.quants.quantize, xn, gt)
            res = race(quant, r)
            row: dict = {"type": t, "shape": name, "imatrix": imatrix, "threads": torch.get_num_threads()}
            for k, v in res.items():
                row[k] = n / v["wall"] / 1e6
                row[k + "_cpu"] = n / v["cpu"] / 1e6
            if not imatrix:
                deq = race({"ours": partial(dequantize, q, t, shape),
                            "numpy": partial(gguf.quants.dequantize, q.numpy(), gt)}, r)  # fmt: skip
                row["deq_ours"] = n / deq["ours"]["wall"] / 1e6
                row["deq_numpy"] = n / deq["numpy"]["wall"] / 1e6
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def quant_table(rows: list[dict], baseline: str | None) -> list[str]:
    has_before = any("before" in r for r in rows)
    before = f" | before ({baseline}) wall / cpu" if has_before else ""
    lines = [
        f"| type | shape | imatrix | ours wall / cpu | torch kernels wall / cpu{before} | gguf numpy wall / cpu "
        "| ours / numpy (wall) |",
        "|---|---|---|---|---|" + ("---|" if has_before else "") + "---|---|",
    ]
    for r in rows:
        cells = [
            r["type"],
            r["shape"],
            "yes" if r["imatrix"] else "no",
            f"{fmt(r['ours'])} / {fmt(r['ours_cpu'])}",
            f"{fmt(r['torch'])} / {fmt(r['torch_cpu'])}" if "torch" in r else "(same)",
        ]
        if has_before:
            cells.append(f"{fmt(r.get('before'))} / {fmt(r.get('before_cpu'))}")
        cells.append(f"{fmt(r.get('numpy'))} / {fmt(r.get('numpy_cpu'))}" if "numpy" in r else "-")
        cells.append(f"{r['ours'] / r['numpy']:.1f}x" if "numpy" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(rows: list[dict]) -> list[str]:
    lines = []
    big = {r["type"]: r for r in rows if r["shape"] == next(iter(SHAPES)) and not r["imatrix"]}
    for t in LEGACY:
        if t in big and "numpy" in big[t]:
            ratio = big[t]["ours"] / big[t]["numpy"]
            lines.append(
                f"- {t}: {ratio:.1f}x gguf's numpy quantizer (wall), target 5x: {'met' if ratio >= 5 else 'not met'}"
            )
    if "Q4_K" in big:
        r = big["Q4_K"]
        ok = "met" if r["ours"] >= 15 else "not met"
        lines.append(f"- Q4_K: {fmt(r['ours'])} M elements/s (wall), target 15: {ok}")
    return lines


def report(rows: list[dict], meta: dict) -> str:
    lines = [
        "# GGUF kernel throughput (bench/bench_ggml_kernels.py)",
        "",
        f"torch {meta['torch']} on {meta['cpu']} ({meta['cores']} cores); gguf {meta['gguf']}, numpy "
        f"{meta['numpy']}. Million elements per second; each cell is the median of {meta['repeats']} rounds "
        "(3 for the searching types on the big tensor), the contenders of a row running back to back in "
        "every round. `wall` is elapsed time, `cpu` the process's CPU time (steadier when other jobs share "
        "the cores). With a thread budget of N, the kernels run row chunks on N worker threads (the C "
        "kernels, or single-threaded torch ops); gguf's numpy quantizer is single-threaded. `ours` is the "
        "default path: the fused C kernels where the type has one (native.py), else the torch kernels; "
        '`torch kernels` is `backend="torch"`, what a GPU runs (`(same)` where ours already is). '
        f"C kernels: {meta['native']}. Load average {meta['load_before']} before, {meta['load_after']} after.",
        "",
        "Every kernel here produces bytes identical to ggml's reference quantizer "
        "(tests/quantize/test_ggml_kernels.py).",
        "",
    ]
    for threads in sorted({r["threads"] for r in rows}):
        sub = [r for r in rows if r["threads"] == threads]
        lines += [f"## Quantize, {threads} thread(s)", ""] + quant_table(sub, meta["baseline"]) + [""]
        lines += [f"### Targets, {threads} thread(s) (3072x3072, no imatrix)", ""] + targets(sub) + [""]
        deq = [r for r in sub if "deq_ours" in r]
        if deq:
            lines += [f"## Dequantize (wall), {threads} thread(s)", "", "| type | shape | ours | gguf numpy |",
                      "|---|---|---|---|"]  # fmt: skip
            lines += [
                f"| {r['type']} | {r['shape']} | {fmt(r['deq_ours'])} | {fmt(r['deq_numpy'])} |" for r in deq
            ]
            lines.append("")
    lines += ["Reference points (reference/gguf.md, same kind of machine, one thread, ggml's C quantizer): "
              "Q8_0 138, Q4_0 370, Q6_K 19.0, Q5_K 9.2, Q4_K 7.3, Q3_K 49.2, Q2_K 9.1 M elements/s.", ""]  # fmt: skip
    if meta.get("notes"):
        lines += ["## Notes", "", meta["notes"], ""]
    return "\n".join(lines)


def native_description() -> str:
    from weightsmith.kernels.ggml import native

    native.library()
    info = native.info()
    if info is None or info.path is None:
        return f"not available ({info.error if info else 'not built'})"
    return f"{info.compiler} {' '.join(info.flags)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default=",".join(ALL_TYPES))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1", help="thread budgets to run, comma-separated (e.g. 1,2)")
    ap.add_argument("--extra-types", default="", help="types also run at the thread budgets after the first")
    ap.add_argument("--no-imatrix", action="store_true", help="skip the importance-matrix runs")
    ap.add_argument("--baseline", help="git revision whose kernels to time as 'before'")
    ap.add_argument("--notes", default="", help="a paragraph appended to the report")
    ap.add_argument("--out", default=str(ROOT / "reports" / "ggml_kernels.md"))
    a = ap.parse_args()
    types = a.types.split(",")
    budgets = [int(t) for t in a.threads.split(",")]
    from importlib.metadata import version

    meta = {
        "torch": torch.__version__,
        "gguf": version("gguf"),
        "numpy": np.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": budgets,
        "repeats": a.repeats,
        "load_before": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "baseline": a.baseline,
        "notes": a.notes,
        "native": native_description(),
    }
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        before = load_baseline(a.baseline, tmp) if a.baseline else None
        for i, threads in enumerate(budgets):
            torch.set_num_threads(threads)
            run_types = types if i == 0 else (a.extra_types.split(",") if a.extra_types else types)
            rows += measure(run_types, a.repeats, False, before if i == 0 else None)
            if not a.no_imatrix and i == 0:
                rows += measure(run_types, a.repeats, True, before)
    meta["load_after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(rows, meta))
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(out.read_text())


if __name__ == "__main__":
    main()
