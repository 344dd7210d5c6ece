"""Whole-command speed of `weightsmith quantize SRC DST.gguf --scheme gguf:Q4_K_M` (issue #16).

Builds a Wan-shaped fp32 safetensors checkpoint (WanTransformer3DModel's real 1.3B shapes with
fewer blocks, random data) in a temp dir, then measures, interleaved run by run (A B C A B C ...):

* ``command``: the CLI in a fresh process, start-up included (wall seconds), with SRC's SHA-256
  remembered from an earlier run (quantize/hashing.py); ``hashed``: the same with a fresh digest
  cache, as the first quantize of a source hashes it;
* ``kernels``: weightsmith's GGUF kernels alone on the same float32 matrices, already in memory,
  at torch's thread budget (the job's floor);
* ``ggml``: ggml's reference quantizer (``ggml_quantize_chunk`` of a ``libggml-base.so``) on the
  same matrices with the same types, rows split over the same number of threads.

The command's own phases (read, quantize = kernels with their fused SQNR, write, hash) come from
its summary. ``--compare DIR`` also runs the command from another checkout (the code before a
change) in the same loop, so both see the same machine. Medians are quoted, each run's load
average is recorded. Usage:

    WEIGHTSMITH_LIBGGML=/path/libggml-base.so .venv/bin/python bench/bench_quantize_speed.py \
        [--layers 6] [--repeats 5] [--threads 2] [--compare /path/to/main] [--json out.json] \
        [--table out.md] [--src reuse.safetensors]

A ``libggml-base.so`` comes from llama-cpp-python's source distribution (0.3.36, the reference in
shared/reference/gguf.md; nothing of it is committed here): ``pip download --no-deps --no-binary
:all: llama-cpp-python==0.3.36``, unpack, then ``cmake -S vendor/llama.cpp -B build -DGGML_NATIVE=OFF
-DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF && cmake --build build --target ggml-base``; the library is
``build/bin/libggml-base.so``. Without it the ``ggml`` column is left out.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchlib import WAN_1_3B

ROOT = Path(__file__).resolve().parent.parent


def build(folder: Path, layers: int) -> Path:
    """A single fp32 safetensors file with Wan2.1-1.3B's shapes and ``layers`` blocks."""
    import diffusers
    import torch
    from safetensors.torch import save_file

    with torch.device("meta"):
        model = diffusers.WanTransformer3DModel(num_layers=layers, **WAN_1_3B)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in sorted(model.state_dict().items())}
    dst = folder / f"wan-{layers}l-fp32.safetensors"
    save_file(sd, str(dst))
    return dst


def matrices(src: Path, recipe: str) -> list[tuple[str, str, object]]:
    """(name, ggml type, float32 tensor) of every quantized tensor, as the command would quantize them."""
    import torch

    from weightsmith.convert.engine import make_plan, resolve_detection, stream
    from weightsmith.families import get_component
    from weightsmith.io import open_single
    from weightsmith.quantize.gguf.run import recipe_plan

    ck = open_single(src)
    det = resolve_detection(ck)
    types = recipe_plan(ck, det, recipe).types()
    plan = make_plan(ck, get_component(det.family, det.component).quant.gguf_layout, detection=det, prefix="")
    out = []
    for name, t in stream(plan):
        qt = types[name]
        if qt not in ("F32", "F16", "BF16"):
            out.append((name, qt, t.to(torch.float32).contiguous()))
    ck.close()
    return out


def time_kernels(mats: list, threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds of weightsmith's kernels alone."""
    import torch

    from weightsmith.kernels.ggml import quantize

    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    for _, qt, x in mats:
        quantize(x, qt)
    return time.perf_counter() - t0, time.process_time() - c0


def time_ggml(mats: list, threads: int, lib_path: str) -> tuple[float, float]:
    """(wall, CPU) seconds of ggml's reference quantizer on the same matrices and types."""
    import gguf
    import numpy as np

    lib = ctypes.CDLL(lib_path)
    fp = ctypes.POINTER(ctypes.c_float)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = (ctypes.c_int, fp, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, fp)  # fmt: skip
    lib.ggml_quantize_init.argtypes = (ctypes.c_int,)
    arrays = [(gguf.GGMLQuantizationType[qt], x.numpy()) for _, qt, x in mats]
    outs = [np.empty(gguf.quant_shape_to_byte_shape(a.shape, t), dtype=np.uint8) for t, a in arrays]
    for t, _ in arrays:
        lib.ggml_quantize_init(int(t))
    null = ctypes.cast(0, fp)

    def part(job):  # ctypes releases the GIL: the threads run in parallel
        t, a, o, r0, r1 = job
        n = a.shape[-1]
        src = a.reshape(-1, n)[r0:].ctypes.data_as(fp)
        dst = o.reshape(a.reshape(-1, n).shape[0], -1)[r0:].ctypes.data_as(ctypes.c_void_p)
        lib.ggml_quantize_chunk(int(t), src, dst, 0, r1 - r0, n, null)

    jobs = []
    for (t, a), o in zip(arrays, outs):
        rows = a.reshape(-1, a.shape[-1]).shape[0]
        step = -(-rows // threads)
        jobs += [(t, a, o, r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]
    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(part, jobs))
    return time.perf_counter() - t0, time.process_time() - c0


# `python -m weightsmith ...` that prints its peak RSS at exit. The kernel's high-water mark of this
# process image (VmHWM), not the child's ru_maxrss: that one also counts the bench's own pages
# (1.2 GB of matrices) at the fork, before exec.
PEAK_WRAPPER = (
    "import atexit, runpy, sys\n"
    "def peak():\n"
    "    hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
    "    print('VmHWM', hwm[0] if hwm else 0, file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv[0] = 'weightsmith'\n"
    "runpy.run_module('weightsmith', run_name='__main__', alter_sys=True)\n"
)
PHASE = re.compile(r"phases \(overlapping\): (.*)$", re.M)


def time_command(
    src: Path, dst: Path, recipe: str, pythonpath: str, threads: int, cache: Path | None = None
) -> tuple[float, float, dict]:
    """(wall, CPU, phases) of the whole command in a fresh process; ``cache``: its
    WEIGHTSMITH_CACHE (where source digests are remembered: a fresh folder hashes SRC)."""
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": str(threads)}
    # An installed weightsmith runs from the .pyc files pip compiled; a shell that sets
    # PYTHONDONTWRITEBYTECODE (this workplace's does) would charge every run ~0.3 s of compiling
    # the sources again. The untimed first run writes them (for --compare's checkout too).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if cache is not None:
        env["WEIGHTSMITH_CACHE"] = str(cache)
    cmd = [sys.executable, "-c", PEAK_WRAPPER, "quantize", str(src), str(dst),
           "--scheme", f"gguf:{recipe}", "--overwrite"]  # fmt: skip
    # Each timed run writes a new file, as a first quantize does: the previous output is deleted
    # before the clock starts (replacing a 240 MB file costs ~0.1 s of freeing its blocks on ext4).
    for old in (dst, dst.with_name(dst.name + ".layers.json")):
        old.unlink(missing_ok=True)
    # ... and with no earlier run's output still being written back: the runs write ~0.7 GB a round,
    # and the kernel's flusher threads (CPU and disk the clock would charge to whichever run comes
    # next) start once gigabytes are dirty. One quantize on its own never gets there.
    os.sync()
    t0 = time.perf_counter()
    # cwd = the checkout: `python -m` puts the working folder first on sys.path, ahead of PYTHONPATH
    p = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=pythonpath
    )
    with ThreadPoolExecutor(2) as pool:  # drain both pipes, then reap the child ourselves: its rusage
        out, err = pool.submit(p.stdout.read), pool.submit(p.stderr.read)  # type: ignore[union-attr]
        _, status, ru = os.wait4(p.pid, 0)
        r = subprocess.CompletedProcess(cmd, os.waitstatus_to_exitcode(status), out.result(), err.result())
    p.returncode = r.returncode
    wall = time.perf_counter() - t0
    cpu = ru.ru_utime + ru.ru_stime
    if r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {r.stderr[-2000:]}")
    phases = {}
    peak = re.search(r"^VmHWM (\d+)$", r.stderr, re.M)
    if peak:
        phases["peak RSS MiB"] = int(peak.group(1)) / 1024
    m = PHASE.search(r.stderr + r.stdout)
    if m:  # "read 1.20 s, quantize 3.40 s, ..."
        for part in m.group(1).split(", "):
            k, v, _ = part.rsplit(" ", 2)
            phases[k] = float(v)
    seconds = re.search(r" in ([0-9.]+) s$", r.stderr + r.stdout, re.M)
    if seconds:
        phases["run"] = float(seconds.group(1))  # the run itself, start-up excluded
    return wall, cpu, phases


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def table(summary: dict, compare: str | None) -> str:
    """The markdown table reports/quantize_speed.md quotes: medians, load averages, the targets."""
    med, cpu, runs = summary["median_s"], summary["median_cpu_s"], summary["runs"]
    names = {
        "command": f"whole command, {summary['label']} (start-up included; SRC's digest remembered)",
        "hashed": f"whole command, {summary['label']} (start-up included; SRC hashed: first quantize of it)",
        "compare": f"whole command, {compare} (start-up included)",
        "kernels": "weightsmith's kernels alone (same matrices, same threads)",
        "ggml": "ggml's reference quantizer (same matrices, same threads)",
    }
    lines = ["| | wall s (median) | CPU s (median) | load averages |", "|---|---|---|---|"]
    for k, label in names.items():
        if k in med:
            loads = ", ".join(f"{r[2]:.1f}" for r in runs[k])
            lines.append(f"| {label} | {med[k]:.2f} | {cpu[k]:.2f} | {loads} |")
    c = med["command"]
    lines.append("")
    if "ggml" in med:
        lines.append(
            f"ggml / command: {med['ggml'] / c:.2f}x wall, {cpu['ggml'] / cpu['command']:.2f}x CPU "
            "(target: >= 2x faster than ggml)"
        )
    if "ggml" in med:
        lines.append(
            f"ggml / hashed command: {med['ggml'] / med['hashed']:.2f}x wall, "
            f"{cpu['ggml'] / cpu['hashed']:.2f}x CPU"
        )
    for k in ("command", "hashed"):
        lines.append(
            f"{k} / kernels: {med[k] / med['kernels']:.2f}x wall, {cpu[k] / cpu['kernels']:.2f}x CPU "
            "(target: within 1.5x of the kernels)"
        )
    ph = summary["phases_median_s"]
    if ph:
        lines.append(
            "phases of the command (medians, s; they overlap): "
            + ", ".join(f"{k} {v:.2f}" for k, v in ph.items())
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", default="Q4_K_M")
    ap.add_argument("--pythonpath", default=str(ROOT), help="weightsmith checkout the command runs")
    ap.add_argument("--label", default="after")
    ap.add_argument("--compare", help="another checkout (e.g. main before a change), run in the same loop")
    ap.add_argument("--src", help="reuse a checkpoint built earlier")
    ap.add_argument("--json", help="write the raw runs here")
    ap.add_argument("--table", help="also write the markdown table here")
    a = ap.parse_args()
    lib = os.environ.get("WEIGHTSMITH_LIBGGML")
    tmp = Path(tempfile.mkdtemp(prefix="ws-bench-speed-"))
    src = Path(a.src) if a.src else build(tmp, a.layers)
    mats = matrices(src, a.recipe)
    weights = sum(x.numel() for _, _, x in mats)
    runs: dict[str, list[tuple[float, float, float]]] = {
        "command": [],
        "hashed": [],
        "kernels": [],
        "ggml": [],
    }
    warm = tmp / "cache-warm"  # "command": SRC's digest remembered by an untimed first run
    time_command(src, tmp / "out.gguf", a.recipe, a.pythonpath, a.threads, warm)
    if a.compare:
        runs["compare"] = []
        time_command(src, tmp / "cmp.gguf", a.recipe, a.compare, a.threads)  # untimed: its .pyc
    phases: list[dict] = []
    for i in range(a.repeats):  # (wall, CPU, load average) per run, interleaved
        if a.compare:
            la = loadavg()
            wall, cpu, _ = time_command(src, tmp / "cmp.gguf", a.recipe, a.compare, a.threads)
            runs["compare"].append((wall, cpu, la))
        la = loadavg()
        wall, cpu, ph = time_command(src, tmp / "out.gguf", a.recipe, a.pythonpath, a.threads, warm)
        runs["command"].append((wall, cpu, la))
        phases.append(ph)
        la = loadavg()  # "hashed": a fresh cache, SRC hashed as on its first quantize
        wall, cpu, _ = time_command(
            src, tmp / "out.gguf", a.recipe, a.pythonpath, a.threads, tmp / f"cache-{i}"
        )
        runs["hashed"].append((wall, cpu, la))
        os.sync()  # (see time_command)
        la = loadavg()
        runs["kernels"].append((*time_kernels(mats, a.threads), la))
        if lib:
            os.sync()
            la = loadavg()
            runs["ggml"].append((*time_ggml(mats, a.threads, lib), la))
        print(
            f"run {i}: "
            + ", ".join(f"{k} {v[-1][0]:.2f} s ({v[-1][1]:.1f} CPU s)" for k, v in runs.items() if v),
            flush=True,
        )
    med = {k: statistics.median(r[0] for r in v) for k, v in runs.items() if v}
    med_cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items() if v}
    ph_med = {k: statistics.median(p[k] for p in phases if k in p) for k in (phases[0] if phases else {})}
    summary = {
        "label": a.label,
        "layers": a.layers,
        "quantized_weights": weights,
        "source_bytes": src.stat().st_size,
        "threads": a.threads,
        "median_s": med,
        "median_cpu_s": med_cpu,
        "phases_median_s": ph_med,
        "runs": runs,
        "loadavg": [r[2] for r in runs["command"]],
    }
    print(json.dumps(summary, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(summary, indent=1))
    md = table(summary, a.compare)
    print(md)
    if a.table:
        Path(a.table).write_text(md + "\n")
    shutil.rmtree(tmp, ignore_errors=True)  # the outputs (and the checkpoint, unless --src)


if __name__ == "__main__":
    main()
