"""CI job: convert a model's transformer, quantize it with a matrix of schemes, verify every
artifact against the full-precision pipeline and fail the job (exit 1) when a gate fails.

    python examples/ci_quantize_matrix.py Wan2.1-T2V-1.3B-Diffusers/ out/ \\
        --scheme gguf:Q8_0 --scheme gguf:Q4_K_M --scheme int8 --gate 'latent_sqnr>=20'

Writes out/<scheme artifacts>, their per-layer tables and out/report/ (report.json, .md, .html),
which examples/publish_passing.py publishes. ``--tiny FAMILY`` first writes a tiny random-weight
pipeline of FAMILY at BASELINE, to try the job out in seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import weightsmith


def artifact_name(scheme: str) -> str:
    """Where a scheme's artifact goes: a GGUF file, or a compressed-tensors component folder."""
    if scheme.startswith("gguf:"):
        return f"model-{scheme.split(':', 1)[1]}.gguf"
    return f"model-{scheme}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("baseline", type=Path, help="a Diffusers pipeline folder")
    ap.add_argument("out", type=Path, help="folder for the artifacts and the report")
    ap.add_argument("--scheme", action="append", help="a quantize scheme (repeatable)")
    ap.add_argument("--gate", action="append", help="a verify gate such as 'psnr>=30' (repeatable)")
    ap.add_argument("--tiny", metavar="FAMILY", help="first write a tiny FAMILY pipeline at BASELINE")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--width", type=int)
    ap.add_argument("--frames", type=int)
    ap.add_argument("--text-len", type=int)
    ap.add_argument("--seeds", default="0")
    args = ap.parse_args(argv)
    schemes: list[str] = args.scheme or ["gguf:Q8_0", "gguf:Q4_K_M", "int8"]
    gates: list[str] = args.gate or ["latent_sqnr>=15"]

    if args.tiny:
        weightsmith.tiny_pipeline(args.baseline, family=args.tiny)
    info = weightsmith.inspect(args.baseline)
    det = info.detection
    print(
        f"baseline: {det.family if det else 'unknown'} {det.variant if det else ''}, {info.parameters:,} parameters"
    )

    # The reference-layout file a ComfyUI user loads; every scheme is quantized from it.
    (args.out / "source").mkdir(parents=True, exist_ok=True)
    transformer = args.baseline / "transformer"
    original = weightsmith.convert(
        transformer, args.out / "source" / "transformer.safetensors", to="original", overwrite=True
    )
    candidates: list[Path] = []
    for scheme in schemes:
        q = weightsmith.quantize(
            original.dst,
            args.out / artifact_name(scheme),
            scheme=scheme,
            config=transformer / "config.json",
            overwrite=True,
        )
        low = q.min_sqnr_db
        print(
            f"{scheme}: {q.bytes_before:,} -> {q.bytes_after:,} bytes, lowest SQNR {low:.1f} dB"
            if low
            else scheme
        )
        candidates.append(q.dst)

    result = weightsmith.verify(
        args.baseline,
        candidates,
        gate=gates,
        report=args.out / "report",
        no_cache=True,
        consumer="weightsmith",
        seeds=args.seeds,
        steps=args.steps,
        height=args.height,
        width=args.width,
        frames=args.frames,
        text_len=args.text_len,
    )
    for c in result.candidates:
        sqnr = c.metrics.get("latent_sqnr")
        shown = f"{sqnr:.1f} dB" if sqnr is not None else "n/a"
        print(f"{'pass' if c.passed else 'FAIL'}  {c.label}  latent_sqnr {shown}")
    for g in result.failed_gates:
        print(f"gate failed: {g.candidate}: {g.gate} ({g.value})", file=sys.stderr)
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
