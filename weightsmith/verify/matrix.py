"""A verification matrix: tiny models of each family, converted, quantized with a list of schemes,
every artifact verified against the float pipeline. What `weightsmith demo` shows.

Schemes are taken from a wish list as far as ``known_schemes()`` offers them, so schemes that
register later (int8/fp8/int4) join the matrix without touching this module. mxfp8 and nvfp4 are
written as ComfyUI comfy_quant files for the families ComfyUI loads natively.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightsmith.errors import QuantizationError, UsageError
from weightsmith.verify.family import demo_models, demo_schemes, published_layout
from weightsmith.verify.gates import Gate, parse_gate
from weightsmith.verify.run import VerifyOptions, VerifyResult, verify
from weightsmith.verify.settings import GenerationSettings
from weightsmith.verify.tiny import TINY_SIZE, save_tiny_pipeline

WISHED_SCHEMES = (
    "gguf:Q8_0",
    "gguf:Q6_K",
    "gguf:Q5_K_M",
    "gguf:Q4_K_M",
    "gguf:Q3_K_M",
    "gguf:Q2_K",
    "int8",
    "fp8",
    "int4",
    "mxfp8",
    "nvfp4",
)
# Shown in the report as an example of CI gates; the demo itself does not fail on them.
DEMO_GATES = ("psnr>=30", "ssim>=0.95")


@dataclass
class MatrixResult:
    runs: list[VerifyResult]
    skipped: list[str] = field(default_factory=list)
    quantize_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def available_schemes(wished: Sequence[str] = WISHED_SCHEMES) -> list[str]:
    """The wished schemes this installation can write."""
    from weightsmith.quantize.schemes import known_schemes

    known = set(known_schemes())
    return [s for s in wished if s in known]


def _artifact_name(family: str, scheme: str) -> str:
    if scheme.startswith("gguf:"):
        return f"{family}-{scheme.split(':', 1)[1]}.gguf"
    if _comfy_candidate(family, scheme):
        return f"{family}-{scheme}-comfy.safetensors"
    return f"{family}-{scheme}"


def _comfy_candidate(family: str, scheme: str) -> bool:
    """Microscaled schemes (mxfp8, nvfp4) are shown as ComfyUI files where ComfyUI loads the
    family natively; elsewhere nvfp4 is a compressed-tensors folder and mxfp8 is skipped."""
    from weightsmith.families import get_component
    from weightsmith.kernels.linear import LINEAR_SCHEMES

    s = LINEAR_SCHEMES.get(scheme)
    comfy = s is not None and s.microscaled and "comfy" in s.formats
    return comfy and get_component(family, "transformer").quant.comfy_fp8


def run_matrix(
    folder: str | Path,
    *,
    families: Sequence[tuple[str, str]] | None = None,
    schemes: Sequence[str] | None = None,
    seeds: tuple[int, ...] = (0, 1),
    steps: int = 4,
    gates: Sequence[str] = DEMO_GATES,
    progress: bool = False,
) -> MatrixResult:
    """Build, convert, quantize and verify; models go under ``folder``, results are returned.

    ``families``: (family, variant) pairs; default each family's demo model (``demo_models``)."""
    from weightsmith.convert.run import convert
    from weightsmith.quantize.schemes import find_scheme

    t0 = time.perf_counter()
    folder = Path(folder)
    schemes = list(available_schemes() if schemes is None else schemes)
    gate_list: list[Gate] = [parse_gate(g) for g in gates]
    result = MatrixResult([])
    for family, variant in demo_models() if families is None else families:
        base = folder / family
        base.mkdir(parents=True, exist_ok=True)
        pipe = save_tiny_pipeline(base / "pipeline", family, variant)
        layout = published_layout(family)
        suffix = ".safetensors" if layout == "original" else ""
        # The published-layout checkpoint is what people quantize from; it is a candidate too.
        converted = convert(
            pipe / "transformer", base / f"{family}-{layout}{suffix}", layout, overwrite=True, progress=False
        ).dst
        candidates = [str(converted)]
        own = [s for s in available_schemes(demo_schemes(family)) if s not in schemes]
        for scheme in [*schemes, *own]:
            dst = base / _artifact_name(family, scheme)
            t = time.perf_counter()
            try:
                find_scheme(scheme).run(converted, dst, scheme, overwrite=True, progress=False, report=False)
            except (QuantizationError, UsageError) as e:
                result.skipped.append(f"{family} {scheme}: {e.one_line()}")
                continue
            result.quantize_seconds[f"{family} {scheme}"] = time.perf_counter() - t
            candidates.append(str(dst))
        h, w, f = TINY_SIZE[family]
        settings = GenerationSettings(
            height=h, width=w, frames=f, steps=steps, seeds=tuple(seeds), text_len=8
        )
        run = verify(
            VerifyOptions(
                str(pipe),
                candidates,
                settings,
                gates=gate_list,
                cache_dir=folder / "cache",
                progress=progress,
            )
        )
        result.runs.append(run)
    result.seconds = time.perf_counter() - t0
    return result


def fidelity_rows(result: MatrixResult) -> list[dict[str, Any]]:
    """One row per (model, candidate): size ratio and the main fidelity numbers."""
    rows = []
    for run in result.runs:
        for c in run.candidates:
            rows.append(
                {
                    "model": f"{run.baseline['family']} {run.baseline['variant']}",
                    "candidate": c.label,
                    "loader": c.loader,
                    "size_ratio": c.size_ratio,
                    "latent_sqnr": c.worst.get("latent_sqnr"),
                    "psnr": c.worst.get("psnr"),
                    "ssim": c.worst.get("ssim"),
                    "exact": c.exact,
                    "passed": c.passed,
                }
            )
    return rows
