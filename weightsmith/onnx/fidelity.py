"""Export a pipeline's transformer as ONNX fp32, fp16 and INT8 and score each with ``verify``
against the torch pipeline (``make demo`` runs this on one tiny family)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weightsmith.onnx.api import export_onnx

KINDS: dict[str, dict[str, str]] = {
    "fp32": {},
    "fp16": {"dtype": "fp16"},
    "int8-dynamic": {"quantize": "int8-dynamic"},
    "int8-static": {"quantize": "int8-static"},
}


def score_exports(
    pipe: Path, out: Path, settings: Any, kinds: Sequence[str] = tuple(KINDS)
) -> list[dict[str, Any]]:
    """One row per kind: the exported folder scored by verify (worst over seeds)."""
    from weightsmith.verify import VerifyOptions, verify

    folders = []
    for kind in kinds:
        dst = out / f"onnx-{kind}"
        export_onnx(pipe, dst, overwrite=True, calibration_settings=settings, **KINDS[kind])
        folders.append(str(dst))
    result = verify(
        VerifyOptions(str(pipe), folders, settings, gates=[], cache_dir=out / "cache", progress=False)
    )
    rows = []
    for kind, cand in zip(kinds, result.candidates, strict=True):
        w = cand.worst
        rows.append(
            {
                "kind": kind,
                **{k: w.get(k) for k in ("latent_sqnr", "latent_cosine", "psnr", "ssim", "size_ratio")},
            }
        )
    return rows


def markdown(title: str, rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"# ONNX exports of the tiny {title} transformer, scored by verify",
        "",
        "| graph | latent SQNR (dB) | latent cosine | PSNR (dB) | SSIM | size vs torch |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['kind']} | {r['latent_sqnr']:.1f} | {r['latent_cosine']:.6f} | {r['psnr']:.1f} | "
            f"{r['ssim']:.4f} | {r['size_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"
