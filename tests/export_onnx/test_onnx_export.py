"""Every family's transformer exported from a tiny fixture through the CLI/API path, then run here
in ONNX Runtime at two shapes and compared with the torch model (``onnxkit``: the check and its
stated tolerance, ORT_RTOL). The VAE halves have their own files (test_onnx_vae_decoder.py,
test_onnx_vae_encoder.py). One export per case (module-scoped), the slow part of these tests.
"""

from __future__ import annotations

import os

import pytest
from onnxkit import check_parts_match_torch

from weightsmith.families import components
from weightsmith.families.export import PARTS, TRANSFORMER, VAE_ENCODER
from weightsmith.families.tiny_init import build_tiny
from weightsmith.onnx.api import export_onnx
from weightsmith.tiny import Fixture, save_fixture

# The transformer variants with yet other interfaces (Wan first/last-frame and VACE, CogVideoX's
# image-to-video ones) take a minute of tracing each, which `make test` cannot afford: they run
# when WEIGHTSMITH_ONNX_SLOW=1 (`make test-onnx-slow`). Every VAE half runs in `make test`, from
# the family's export-test config (test_onnx_vae_*.py; reports/onnx_vae_trace.md).
SLOW = os.environ.get("WEIGHTSMITH_ONNX_SLOW") == "1" or os.environ.get("WEIGHTSMITH_ONNX_VAE") == "1"
OPT_IN = pytest.mark.skipif(
    not SLOW,
    reason="minutes of tracing; run with WEIGHTSMITH_ONNX_SLOW=1 (make test-onnx-slow)",
)

# (family, component, variant) of every exportable transformer, asked of the registry.
CASES = [
    pytest.param((c.family, c.component, c.variants[0]), id=f"{c.family}-{c.component}")
    for c in components()
    if c.export is not None and c.component == "transformer"
]


def _interface(c, variant: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What makes a transformer variant's graph another graph: its inputs and its fixed dims."""
    plan = c.export_plan(c.tiny_config(variant), variant, TRANSFORMER)
    return tuple(s.name for s in plan.inputs), tuple(sorted(plan.static))


def _other_inputs(c) -> str | None:
    """The first variant whose graph takes other inputs than the first variant's, if any."""
    first = _interface(c, c.variants[0])[0]
    return next((v for v in c.variants[1:] if _interface(c, v)[0] != first), None)


def _other_interfaces(c, covered: set[str]) -> list[str]:
    """Variants beyond ``covered`` whose interface none before them had (Wan first/last-frame and
    VACE, CogVideoX's image-to-video ones); the rest (Wan 2.2 A14B experts, ...) share a graph."""
    seen = {_interface(c, v) for v in covered}
    out = []
    for v in c.variants:
        key = _interface(c, v)
        if v not in covered and key not in seen:
            seen.add(key)
            out.append(v)
    return out


TRANSFORMERS = [c for c in components() if c.export is not None and c.component == "transformer"]
# Transformers whose other variants take other inputs (CogVideoX's rotary tables, Wan's image
# embeddings): that one too; every further interface opt-in.
CASES += [
    pytest.param((c.family, c.component, v), id=f"{c.family}-{c.component}-{v}")
    for c in TRANSFORMERS
    for v in [_other_inputs(c)]
    if v is not None
]
CASES += [
    pytest.param(
        (c.family, c.component, v), marks=[pytest.mark.slow, OPT_IN], id=f"{c.family}-{c.component}-{v}"
    )
    for c in TRANSFORMERS
    for v in _other_interfaces(c, {c.variants[0], _other_inputs(c)} - {None})
]


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory):
    family, component, variant = request.param
    base = tmp_path_factory.mktemp(f"onnx-{family}-{component}")
    src = save_fixture(Fixture(family, component, variant, "diffusers", "diffusers-folder"), base / "src")
    dst = base / "out"
    result = export_onnx(src, dst, component=TRANSFORMER)
    return src, dst, result


def test_every_part_matches_torch_in_onnxruntime_at_two_shapes(exported):
    check_parts_match_torch(*exported)


def test_parts_cover_transformer_and_both_vae_halves():
    parts = {(c.family, p) for c in components() if c.export is not None for p in c.export.parts}
    families = {c.family for c in components() if c.export is not None}
    assert parts == {(f, p) for f in families for p in PARTS}
    assert families == {c.family for c in components()}


@pytest.mark.parametrize(
    "comp",
    [pytest.param(c, id=c.family) for c in components() if c.export is not None and c.component == "vae"],
)
def test_vae_export_configs_keep_every_module_kind_and_geometry(comp):
    """The VAE export tests trace a smaller model than the tiny one: every module class of the
    tiny VAE must still be in it, with the same compression in time (cache and resampling paths)."""
    variant = comp.variants[0]
    models = [
        build_tiny(lambda **kw: comp.instantiate(variant, kw), cfg, 0)
        for cfg in (comp.tiny_config(variant), comp.tiny_export_config(variant))
    ]
    tiny, cut = ({type(m).__name__ for m in model.modules()} for model in models)
    assert tiny == cut
    plans = [comp.export_plan(comp.model_config(m), variant, VAE_ENCODER) for m in models]
    assert plans[0].offsets == plans[1].offsets
    assert plans[0].sizes["frames"] == plans[1].sizes["frames"]
