"""Peak memory and wall time of `quantize --scheme gguf:*` on a full-size synthetic checkpoint.

Builds Wan2.1-T2V-1.3B's real shapes with random bf16 data (a Diffusers folder in 1 GB shards,
2.8 GB), then quantizes it in a fresh subprocess per recipe and samples the process's anonymous
RSS. Usage:

    .venv/bin/python bench/bench_gguf_quantize.py [--recipes Q8_0,Q4_K_M] [--backends auto,torch]
        [--out reports/gguf_quantize.md]

``--backends`` runs each recipe with the GGUF kernels picked by ``WEIGHTSMITH_GGML_BACKEND``: ``auto``
(the fused C kernels on the CPU) and ``torch`` (the torch kernels, what a GPU runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def child(src: str, dst: str, recipe: str) -> None:
    import diffusers  # noqa: F401 - imported before sampling: its import is not the job's memory
    from memlib import PeakSampler

    from weightsmith.memory import release_large_allocations

    release_large_allocations()  # as the CLI does

    import weightsmith.families  # noqa: F401
    import weightsmith.kernels.ggml  # noqa: F401
    from weightsmith.quantize.gguf.run import quantize_gguf

    with PeakSampler() as s:
        t0 = time.perf_counter()
        res = quantize_gguf(src, dst, f"gguf:{recipe}", progress=False, overwrite=True)
        seconds = time.perf_counter() - t0
    largest = max(r.bytes_before for r in res.layers)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "base": s.base_anon,
                "peak": s.peak_anon,
                "largest": largest,
                "size": Path(dst).stat().st_size,
                "params": sum(r.bytes_before for r in res.layers) // 2,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipes", default="Q8_0,Q4_K_M")
    ap.add_argument("--backends", default="auto,torch")
    ap.add_argument("--out", default=str(ROOT / "reports" / "gguf_quantize.md"))
    ap.add_argument("--child", nargs=3)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return
    from bench_convert import build

    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-gguf-"))
    mib = 2**20
    lines = [
        "# GGUF quantization of a full-size checkpoint (bench/bench_gguf_quantize.py)",
        "",
        "Wan2.1-T2V-1.3B shapes, random bf16 data, read from a Diffusers folder in 1 GB shards, converted",
        "on the fly to the original layout and quantized on the CPU (2 cores) in a fresh process per run,",
        "with the fused C kernels (`auto`) or the torch kernels (`torch`, what a GPU runs). Seconds are the",
        "whole job: reading, layout conversion, quantizing, the per-layer SQNR, source hashing and writing.",
        "Peak anon RSS growth is what the process allocated beyond the interpreter and torch.",
        "",
        "| recipe | kernels | source | output | seconds | M params/s | peak anon growth | largest tensor (bf16) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    try:
        src = build("wan2.1-t2v-1.3b", tmp, 1.0)
        for recipe in a.recipes.split(","):
            for backend in a.backends.split(","):
                dst = tmp / f"wan-{recipe}.gguf"
                cmd = [sys.executable, __file__, "--child", str(src), str(dst), recipe]
                env = {**os.environ, "WEIGHTSMITH_GGML_BACKEND": backend}
                r = json.loads(
                    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
                    .stdout.strip()
                    .splitlines()[-1]
                )
                print(recipe, backend, r)
                lines.append(
                    f"| {recipe} | {'C' if backend == 'auto' else backend} | {r['params'] * 2 / 1e9:.2f} GB | "
                    f"{r['size'] / 1e9:.2f} GB | {r['seconds']:.0f} | {r['params'] / r['seconds'] / 1e6:.1f} | "
                    f"{(r['peak'] - r['base']) / mib:,.0f} MiB | {r['largest'] / mib:,.0f} MiB |"
                )
                dst.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines += [
        "",
        "Tensors are streamed one at a time; nothing is kept per layer but its SQNR record. What remains of the",
        "peak is the float32 working copy of the tensor being quantized, its output, the reader's buffers and,",
        "with the torch kernels, their per-thread scratch.",
    ]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
