"""Start-up time of the command line: `--help`, `--version`, `COMMAND --help` and `inspect` of a
GGUF and a safetensors file, each in a fresh interpreter, with the heavy libraries each imports.

Wall time and CPU time (user + sys of the child) are medians of ``--runs`` runs; CPU time is what
a command costs on an idle machine (wall time also counts waiting for a shared core). The import
breakdown is ``python -X importtime`` of the same command. ``--before PATH`` also measures
another checkout (e.g. the main branch) for a before/after table. Usage:

    .venv/bin/python bench/bench_startup.py [--runs 7] [--before ../main] [--out reports/startup.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "torchao", "numpy", "gguf")
# Runs one command through the entry point and prints the heavy modules it left imported.
_RUN = (
    "import sys\nfrom weightsmith.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    f"sys.stderr.write('LOADED ' + ','.join(m for m in {HEAVY!r} if m in sys.modules) + '\\n')\n"
)


def make_artifacts(folder: Path) -> dict[str, Path]:
    """A tiny transformer saved as original-layout safetensors and as GGUF (with embedded configs)."""
    from weightsmith.cli import main
    from weightsmith.families import components
    from weightsmith.tiny import Fixture, save_fixture

    comp = next(c for c in components() if c.component == "transformer" and "original" in c.layouts)
    src = save_fixture(
        Fixture(comp.family, comp.component, comp.variants[0], "diffusers", "diffusers-folder"), folder
    )
    out = {"safetensors": folder / "model.safetensors", "gguf": folder / "model.gguf"}
    for argv in (
        ["convert", str(src), str(out["safetensors"]), "--to", "original"],
        ["quantize", str(src), str(out["gguf"]), "--scheme", "gguf:Q8_0"],
    ):
        try:
            main(argv)
        except SystemExit as e:
            if e.code not in (0, None):
                raise
    return out


def run_once(repo: Path, argv: list[str]) -> tuple[float, float, str]:
    """(wall s, child CPU s, heavy modules loaded) of one fresh run in ``repo``."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", _RUN, *argv], env=env, capture_output=True, text=True, cwd=repo, check=False
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    loaded = re.findall(r"^LOADED (.*)$", r.stderr, re.M)
    return wall, cpu, (loaded[-1] if loaded else "?") or "-"


def importtime(repo: Path, argv: list[str], top: int = 6) -> list[tuple[str, float]]:
    """The largest cumulative import times (ms) of one run, outermost imports only."""
    env = dict(os.environ, PYTHONPATH=str(repo))
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", _RUN, *argv],
        env=env,
        capture_output=True,
        text=True,
        cwd=repo,
        check=False,
    )
    rows = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and len(m.group(2)) <= 2:  # top-level (and one level below) only
            rows.append((m.group(3), int(m.group(1)) / 1000))
    return sorted(rows, key=lambda x: -x[1])[:top]


def measure(repo: Path, cases: dict[str, list[str]], runs: int) -> dict[str, tuple[float, float, str]]:
    out = {}
    for label, argv in cases.items():
        run_once(repo, argv)  # warm the page cache and .pyc files
        samples = [run_once(repo, argv) for _ in range(runs)]
        out[label] = (
            statistics.median(s[0] for s in samples),
            statistics.median(s[1] for s in samples),
            samples[-1][2],
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--before", type=Path, help="another checkout to measure the same way (before)")
    ap.add_argument("--out", type=Path, default=ROOT / "reports" / "startup.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        arts = make_artifacts(Path(tmp))
        cases = {
            "weightsmith --help": ["--help"],
            "weightsmith --version": ["--version"],
            "weightsmith quantize --help": ["quantize", "--help"],
            "weightsmith verify --help": ["verify", "--help"],
            "weightsmith inspect FILE.gguf": ["inspect", str(arts["gguf"])],
            "weightsmith inspect FILE.safetensors": ["inspect", str(arts["safetensors"])],
        }
        after = measure(ROOT, cases, args.runs)
        before = measure(args.before.resolve(), cases, args.runs) if args.before else None
        breakdown = {
            label: importtime(ROOT, cases[label])
            for label in ("weightsmith --help", "weightsmith inspect FILE.gguf")
        }
        old_breakdown = importtime(args.before.resolve(), ["--help"]) if args.before else None
    load = os.getloadavg()
    lines = [
        "# Command-line start-up",
        "",
        f"`bench/bench_startup.py`: each command in a fresh interpreter, median of {args.runs} runs "
        f"(after one warm-up). {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average {load[0]:.1f} while measuring (the "
        "cores are shared, so wall time includes waiting for one: CPU time is the command's own cost).",
        "",
        "Targets (issue #16): `--help` under 0.5 s, `inspect` of a GGUF under 1 s; none of torch, "
        "diffusers, transformers, torchao imported (tests/test_startup.py counts the modules).",
        "",
    ]
    if before:
        lines += [
            "| command | before: wall s | before: CPU s | after: wall s | after: CPU s | heavy modules before | after |",
            "|---|---:|---:|---:|---:|---|---|",
        ]
        for label in cases:
            b, a = before[label], after[label]
            lines.append(
                f"| `{label}` | {b[0]:.2f} | {b[1]:.2f} | {a[0]:.2f} | {a[1]:.2f} | {b[2]} | {a[2]} |"
            )
    else:
        lines += ["| command | wall s | CPU s | heavy modules |", "|---|---:|---:|---|"]
        for label, a in after.items():
            lines.append(f"| `{label}` | {a[0]:.2f} | {a[1]:.2f} | {a[2]} |")
    lines += ["", "Largest imports (`python -X importtime`, cumulative ms, one run):", ""]
    if old_breakdown:
        lines.append("- before, `--help`: " + ", ".join(f"{m} {t:.0f}" for m, t in old_breakdown))
    for label, rows in breakdown.items():
        lines.append(
            f"- after, `{label.removeprefix('weightsmith ')}`: " + ", ".join(f"{m} {t:.0f}" for m, t in rows)
        )
    lines.append("")
    args.out.write_text("\n".join(lines))
    sys.stdout.write("\n".join(lines))


if __name__ == "__main__":
    main()
