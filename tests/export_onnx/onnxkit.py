"""What the ONNX export tests check, shared by the transformer file and the VAE files (one file per
VAE part, so pytest-xdist's ``--dist loadfile`` spreads the VAE traces over the workers).

Stated tolerance: the largest absolute difference over the output's largest absolute value,
``ORT_RTOL`` below (fp32 graphs of the same math; tiny models land near 1e-7, a wrong graph at
1e-2 or more).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from weightsmith.families import components, get_component
from weightsmith.families.export import TRANSFORMER
from weightsmith.families.inputs import example_inputs
from weightsmith.load import load_model
from weightsmith.onnx.api import ExportResult, export_onnx
from weightsmith.onnx.layout import MANIFEST, graph_path
from weightsmith.onnx.runtime import session
from weightsmith.tiny import save_export_fixture

ORT_RTOL = 1e-4


def _torch_forward(src: Path, family: str, component: str, variant: str, part: str):
    comp = get_component(family, component)
    model = load_model(src, component=component)
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    plan = comp.export_plan(config, variant, part)
    return comp.export.module(model, plan), plan


def check_parts_match_torch(src: Path, dst: Path, result: ExportResult) -> None:
    """Every exported part of ``src`` in ``dst``, run in ONNX Runtime at the plan's two shapes,
    within ``ORT_RTOL`` of the torch model, with the plan's interface; and the export's own
    validation measured those same two shapes."""
    manifest = json.loads((dst / MANIFEST).read_text())
    assert set(manifest["parts"]) == {p.part for p in result.parts}
    for p in result.parts:
        assert p.kind == "fp32"
        module, plan = _torch_forward(
            src, p.family, "transformer" if p.part == TRANSFORMER else "vae", p.variant, p.part
        )
        assert plan.sizes != plan.second  # two different shapes
        sess = session(graph_path(dst, p.part))
        assert [i.name for i in sess.get_inputs()] == [s.name for s in plan.inputs]
        assert [o.name for o in sess.get_outputs()] == [o.name for o in plan.outputs]
        shapes = []
        for seed, sizes in enumerate((plan.sizes, plan.second), start=7):
            x = example_inputs(plan.inputs, sizes, seed=seed)
            with torch.no_grad():
                want = module(*x.values()).numpy()
            got = sess.run(None, {k: v.numpy() for k, v in x.items()})[0]
            assert got.shape == want.shape
            shapes.append(got.shape)
            err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
            assert err <= ORT_RTOL, (p.part, sizes, err)
        assert shapes[0] != shapes[1], f"{p.part}: both shapes were the same"
        # the export's own validation measured the same two shapes
        assert {tuple(sorted(e["sizes"].items())) for e in p.errors} == {
            tuple(sorted(s.items())) for s in (plan.sizes, plan.second)
        }


def export_vae_part(tmp_path_factory, comp, part: str) -> tuple[Path, Path, ExportResult]:
    """``part`` of ``comp``'s export-test VAE (``Component.tiny_export_config``) saved as a Diffusers
    folder and exported through the API: (source, destination, result)."""
    base = tmp_path_factory.mktemp(f"onnx-{comp.family}-{part}")
    src = save_export_fixture(comp.family, comp.component, comp.variants[0], base / "src")
    dst = base / "out"
    return src, dst, export_onnx(src, dst, component=part)


VAES = [pytest.param(c, id=c.family) for c in components() if c.export is not None and c.component == "vae"]


def vae_part_fixture(part: str):
    """A module-scoped ``exported`` fixture: ``part`` of every family's export-test VAE, one
    export per family (:func:`export_vae_part`)."""

    @pytest.fixture(scope="module", params=VAES)
    def exported(request, tmp_path_factory):
        return export_vae_part(tmp_path_factory, request.param, part)

    return exported
