"""`weightsmith inspect` names family, layout and variant of every tiny fixture in every container."""

from __future__ import annotations

import json

import pytest

from weightsmith.inspect import SCHEMA, describe
from weightsmith.tiny import Fixture, fixtures, save_fixture

ALL = list(fixtures())

# Containers that carry no config.json: where the weights alone cannot tell two variants apart,
# weightsmith must say "unknown" rather than guess. CogVideoX 2B and 5B differ only in
# positional embedding style, which Diffusers weights do not show (SAT's do).
AMBIGUOUS_WITHOUT_CONFIG = {
    ("cogvideox", "transformer", "diffusers", "2b"),
    ("cogvideox", "transformer", "diffusers", "5b"),
}
HAS_CONFIG = {"diffusers-folder"}


@pytest.fixture(scope="module")
def fixture_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fixtures")


@pytest.mark.parametrize("fx", ALL, ids=[f.name for f in ALL])
def test_detects_every_fixture(fx: Fixture, fixture_dir):
    path = save_fixture(fx, fixture_dir)
    r = describe(path)
    det = r["detection"]
    assert det is not None, f"{fx.name} not recognised"
    assert (det["family"], det["component"], det["layout"]) == (fx.family, fx.component, fx.layout)
    ambiguous = (fx.family, fx.component, fx.layout, fx.variant) in AMBIGUOUS_WITHOUT_CONFIG
    if ambiguous and fx.container not in HAS_CONFIG:
        assert det["variant"] is None and det["notes"], (
            "an ambiguous variant must be reported unknown, with a note"
        )
    else:
        assert det["variant"] == fx.variant
    assert r["parameters"] > 0 and r["tensors"] > 0 and r["bytes_on_disk"] > 0
    if fx.container == "prefixed":
        assert det["prefix"] == "model.diffusion_model."


def test_fixture_matrix_covers_every_registered_component():
    from weightsmith.families import components

    for comp in components():
        for variant in comp.variants:
            for layout in comp.layouts:
                assert any(
                    (f.family, f.component, f.variant, f.layout)
                    == (comp.family, comp.component, variant, layout)
                    for f in ALL
                )


def test_json_schema_is_stable(tmp_path, run_cli):
    path = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "original", "gguf"), tmp_path)
    r = run_cli("inspect", path, "--json")
    assert r.code == 0, r.err
    d = json.loads(r.out)
    assert d["schema"] == SCHEMA
    assert set(d) == {
        "schema",
        "path",
        "container",
        "files",
        "bytes_on_disk",
        "tensors",
        "parameters",
        "dtypes",
        "quantized",
        "detection",
        "config",
        "metadata",
    }
    assert set(d["detection"]) == {"family", "component", "layout", "variant", "prefix", "notes", "facts"}
    assert d["metadata"]["general.architecture"] == "wan"
    assert set(d["dtypes"]["F32"]) == {"tensors", "parameters", "bytes"}
    # Stable: the same file gives the same bytes.
    assert run_cli("inspect", path, "--json").out == r.out


def test_unknown_model_is_reported_unknown(tmp_path, run_cli):
    import torch
    from safetensors.torch import save_file

    save_file({"encoder.layer.0.weight": torch.zeros(4, 4)}, str(tmp_path / "bert.safetensors"))
    r = run_cli("inspect", tmp_path / "bert.safetensors")
    assert r.code == 0
    assert "unknown" in r.out
    d = json.loads(run_cli("inspect", tmp_path / "bert.safetensors", "--json").out)
    assert d["detection"] is None


def test_quantized_gguf_types_are_listed(tmp_path):
    import gguf
    import numpy as np
    from gguf.constants import GGMLQuantizationType as Q

    p = tmp_path / "q.gguf"
    w = gguf.GGUFWriter(str(p), "wan")
    q = gguf.quants.quantize(np.ones((4, 64), np.float32), Q.Q8_0)
    w.add_tensor("blocks.0.ffn.0.weight", q, raw_shape=q.shape, raw_dtype=Q.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    r = describe(p)
    assert r["quantized"] == {"Q8_0": {"tensors": 1, "parameters": 256, "bytes": 4 * 68}}


def test_pipeline_reports_components(tmp_path):
    import shutil

    for comp, fx in {
        "transformer": Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"),
        "transformer_2": Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"),
        "vae": Fixture("wan", "vae", "2.1", "diffusers", "diffusers-folder"),
    }.items():
        src = save_fixture(fx, tmp_path / "build" / comp)
        shutil.copytree(src, tmp_path / "pipe" / comp)
    index = {
        "_class_name": "WanPipeline",
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    r = describe(tmp_path / "pipe")
    assert set(r["components"]) == {"transformer", "transformer_2", "vae"}
    assert r["detection"]["variant"] == "2.2-t2v-a14b"
    assert r["components"]["vae"]["detection"]["variant"] == "2.1"
