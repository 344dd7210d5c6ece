"""Quantized artifacts with broken side data (ComfyUI's per-layer JSON, a folder's config) exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

DEEP = "[" * 5000 + "]" * 5000


@pytest.mark.parametrize(
    ("meta", "words"),
    [
        (DEEP, "nested"),
        ('{"layers": [1, 2]}', "no 'layers' table"),
        ('{"layers": {"blocks.0.ffn.0": 7}}', "is not a format"),
        ("[NaN]", "NaN is not valid JSON"),
        ("1" * 5000, "4300"),
    ],
)
def test_comfy_quant_metadata_broken(tmp_path, run_cli, meta, words):
    p = tmp_path / "m.safetensors"
    save_file({"blocks.0.ffn.0.weight": torch.zeros(4, 4)}, str(p), metadata={"_quantization_metadata": meta})
    r = run_cli("convert", p, tmp_path / "out", "--to", "diffusers")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert words in r.words
    assert not (tmp_path / "out").exists()


def test_comfy_quant_tensor_not_json(tmp_path, run_cli):
    p = tmp_path / "m.safetensors"
    blob = torch.tensor(list(b"{" * 300), dtype=torch.uint8)
    save_file({"blocks.0.ffn.0.weight": torch.zeros(4, 4), "blocks.0.ffn.0.comfy_quant": blob}, str(p))
    r = run_cli("convert", p, tmp_path / "out", "--to", "diffusers")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "comfy_quant" in r.words


def test_quantized_folder_config_deeply_nested(tmp_path, run_cli):
    folder = tmp_path / "ct"
    folder.mkdir()
    save_file({"proj_out.weight": torch.zeros(4, 4)}, str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text('{"a": ' + DEEP + "}")
    r = run_cli("convert", folder, tmp_path / "out", "--to", "original")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "nested" in r.words
    (folder / "config.json").write_text(json.dumps({"quantization_config": {"format": 1e308}}) + " ")
    r = run_cli("convert", folder, tmp_path / "out", "--to", "original")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
