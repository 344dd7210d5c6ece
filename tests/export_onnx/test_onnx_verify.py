"""``verify`` scores an exported ONNX transformer folder like any other candidate: ONNX Runtime
runs the graph inside the family's pipeline and scheduler loop, and an fp32 export is
near-exact (latent SQNR far above any quantized artifact's)."""

from __future__ import annotations

from weightsmith.families import components
from weightsmith.onnx.api import export_onnx
from weightsmith.verify import VerifyOptions, verify
from weightsmith.verify.settings import GenerationSettings
from weightsmith.verify.tiny import TINY_SIZE, save_tiny_pipeline


def test_verify_scores_an_onnx_fp32_candidate_as_near_exact(tmp_path):
    # the image family (no frame axis): the quickest pipeline to run
    comp = next(
        c
        for c in components()
        if c.component == "transformer"
        and c.export is not None
        and "frames"
        not in {d for s in c.input_specs(c.tiny_config(c.variants[0]), c.variants[0]) for d in s.dims}
    )
    pipe = save_tiny_pipeline(tmp_path / "pipe", comp.family, comp.variants[0])
    export_onnx(pipe / "transformer", tmp_path / "onnx")
    h, w, f = TINY_SIZE[comp.family]
    result = verify(
        VerifyOptions(
            str(pipe),
            [str(tmp_path / "onnx")],
            GenerationSettings(height=h, width=w, frames=f, steps=2, text_len=8),
            gates=[],
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    )
    (cand,) = result.candidates
    assert cand.loader == "onnx"
    assert cand.worst["latent_sqnr"] > 80 and cand.worst["latent_cosine"] > 0.999999, cand.worst


def test_int8_static_calibrates_on_reference_generations(tmp_path):
    import json

    from weightsmith.onnx.layout import MANIFEST

    comp = next(c for c in components() if c.component == "transformer" and c.export is not None)
    pipe = save_tiny_pipeline(tmp_path / "pipe", comp.family, comp.variants[0])
    h, w, f = TINY_SIZE[comp.family]
    settings = GenerationSettings(height=h, width=w, frames=f, steps=2, text_len=8)
    result = export_onnx(pipe, tmp_path / "int8", quantize="int8-static", calibration_settings=settings)
    manifest = json.loads((tmp_path / "int8" / MANIFEST).read_text())
    # two steps with classifier-free guidance or not: at least one call per step
    calls = int(manifest["calibration"].split()[0])
    assert calls >= 2 and manifest["calibration"].endswith("reference denoising calls")
    (part,) = result.parts
    assert part.kind == "int8" and len(part.errors) == 2
