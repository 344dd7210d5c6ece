"""Peak memory of streaming a synthetic multi-GB checkpoint through weightsmith's writers and readers.

Each scenario runs in a fresh subprocess so peaks don't mix. Usage:

    .venv/bin/python bench/bench_io.py [--gb 4] [--shard-gb 1] [--out reports/io_memory.md]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Full-size Wan 14B FFN shapes in bf16: 13824 x 5120 = 141 MB per tensor.
ROWS, COLS = 13824, 5120


def child(mode: str, folder: str, gb: float, shard_gb: float) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import torch
    from memlib import PeakSampler

    from weightsmith.memory import release_large_allocations

    release_large_allocations()  # as the CLI does

    from weightsmith.io import open_checkpoint
    from weightsmith.io.writers import write_diffusers_component

    n = max(1, int(gb * 1e9 // (ROWS * COLS * 2)))
    specs = [(f"blocks.{i}.ffn.0.weight", (ROWS, COLS), torch.bfloat16) for i in range(n)]
    result = {"tensors": n, "tensor_bytes": ROWS * COLS * 2, "total_bytes": n * ROWS * COLS * 2}
    dst = Path(folder) / "ckpt"
    with PeakSampler() as s:
        t0 = time.perf_counter()
        if mode == "write":

            def stream():
                for i, (name, shape, dtype) in enumerate(specs):
                    yield name, torch.full(shape, float(i % 7), dtype=dtype)

            write_diffusers_component(dst, specs, stream(), {"_class_name": "Synthetic"}, int(shard_gb * 1e9))
        else:
            ck = open_checkpoint(dst)
            total = 0.0
            for name in ck:
                total += float(ck.get(name)[0, 0])
        result["seconds"] = time.perf_counter() - t0
    result.update(mode=mode, base_anon=s.base_anon, peak_anon=s.peak_anon, hwm=s.hwm)
    print(json.dumps(result))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=4.0)
    ap.add_argument("--shard-gb", type=float, default=1.0)
    ap.add_argument("--out", default=str(ROOT / "reports" / "io_memory.md"))
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1], a.gb, a.shard_gb)
        return
    tmp = tempfile.mkdtemp(prefix="ws-bench-io-")
    rows = []
    try:
        for mode in ("write", "read"):
            cmd = [
                sys.executable,
                __file__,
                "--gb",
                str(a.gb),
                "--shard-gb",
                str(a.shard_gb),
                "--child",
                mode,
                tmp,
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1])
        shards = len(list((Path(tmp) / "ckpt").glob("*.safetensors")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mib = 2**20
    lines = [
        "# Streaming I/O memory (bench/bench_io.py)",
        "",
        f"Synthetic checkpoint: {rows[0]['tensors']} bf16 tensors of {ROWS}x{COLS} "
        f"({rows[0]['tensor_bytes'] / mib:,.0f} MiB each), {rows[0]['total_bytes'] / 1e9:.2f} GB in all, "
        f"written as {shards} shards of at most {a.shard_gb:g} GB.",
        "",
        "Peak anonymous RSS is the memory the process itself holds (sampled every 5 ms from /proc);",
        "peak total RSS (the kernel's high-water mark) also counts interpreter, torch and page-cache pages",
        "mapped into the process.",
        "",
        "| step | seconds | anon RSS before | peak anon RSS | peak anon growth | peak total RSS |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['seconds']:.1f} | {r['base_anon'] / mib:,.0f} MiB | {r['peak_anon'] / mib:,.0f} MiB | "
            f"{(r['peak_anon'] - r['base_anon']) / mib:,.0f} MiB | {r['hwm'] / mib:,.0f} MiB |"
        )
    worst = max(r["peak_anon"] - r["base_anon"] for r in rows)
    lines += [
        "",
        f"The largest growth is {worst / rows[0]['tensor_bytes']:.1f} tensors ({worst / mib:,.0f} MiB): "
        f"bounded by a tensor, far below one shard ({a.shard_gb * 1e9 / mib:,.0f} MiB) and the model "
        f"({rows[0]['total_bytes'] / mib:,.0f} MiB).",
    ]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
