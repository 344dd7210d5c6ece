"""Run every benchmark in bench/, one after another, each writing its report under reports/.

`make bench` calls this. Benchmarks are long (the full set takes well over an hour on a 2-core
machine and needs ~10 GB of free disk for the synthetic full-size checkpoints), so each one runs
in its own process, a failure is reported and the rest still run, and the exit code says whether
all of them succeeded. Usage:

    .venv/bin/python bench/run_all.py [--only NAME[,NAME...]] [--list]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    report: str
    about: str


BENCHES = [
    Bench("io", "bench_io.py", "reports/io_memory.md", "peak memory streaming a 4 GB checkpoint"),
    Bench("convert", "bench_convert.py", "reports/convert.md", "full-size Wan 1.3B / CogVideoX-2B convert"),
    Bench("ggml_kernels", "bench_ggml_kernels.py", "reports/ggml_kernels.md", "GGUF kernel throughput"),
    Bench("gguf_quantize", "bench_gguf_quantize.py", "reports/gguf_quantize.md", "GGUF quantize of Wan 1.3B"),
    Bench("quant_schemes", "bench_quant_schemes.py", "reports/quant_schemes.md", "int8/fp8/int4 schemes"),
    Bench(
        "comfy_formats",
        "bench_comfy_formats.py",
        "reports/comfy_formats.md",
        "fidelity vs size: GGUF, compressed-tensors, ComfyUI formats",
    ),
    Bench("imatrix", "verify_imatrix.py", "reports/imatrix.md", "effect of an imatrix on tiny models"),
    Bench("fuzz", "bench_fuzz.py", "reports/fuzz.md", "long fuzz run over every reader"),
    Bench(
        "auto_precision",
        "bench_auto_precision.py",
        "reports/auto_precision.md",
        "auto: mixes vs uniform recipes",
    ),
    Bench(
        "onnx_vae_trace",
        "bench_onnx_vae_trace.py",
        "reports/onnx_vae_trace.md",
        "where a tiny VAE's ONNX export spends its time",
    ),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated benchmark names (see --list)")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = ap.parse_args()
    if args.list:
        for b in BENCHES:
            print(f"{b.name:14} {b.report:28} {b.about}")
        return 0
    wanted = {n for n in args.only.split(",") if n}
    unknown = wanted - {b.name for b in BENCHES}
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; see --list", file=sys.stderr)
        return 2
    failed = []
    for b in BENCHES:
        if wanted and b.name not in wanted:
            continue
        print(f"== {b.name}: {b.about} -> {b.report}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(ROOT / "bench" / b.script)], cwd=ROOT)
        print(f"== {b.name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(b.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
