"""Sana's Gemma-2 text encoder as llama.cpp's ``gemma2`` GGUF: its tensor names, norms stored as
1 + w (the plan's Shift op), F32 norms; transformers' own GGUF loader reads our F16/Q8_0/Q4_K_M
as Gemma2Model with weights equal to our dequantized ones; GGUF -> transformers layout round trip."""

from __future__ import annotations

import pytest
import torch

RECIPES = ["F16", "Q8_0", "Q4_K_M"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from weightsmith.families import get_component

    comp = get_component("sana", "text_encoder")
    root = tmp_path_factory.mktemp("gemma2")
    comp.tiny_model(comp.variants[0], seed=0, wide=True).save_pretrained(str(root / "te"))
    return root / "te"


@pytest.mark.parametrize("recipe", RECIPES)
def test_transformers_loads_our_gemma2_gguf(recipe, folder, tmp_path, run_cli):
    from gguf import GGUFReader
    from transformers import Gemma2Model

    out = tmp_path / f"gemma2-{recipe}.gguf"
    r = run_cli("quantize", folder, out, "--scheme", f"gguf:{recipe}")
    assert r.code == 0, r.err
    reader = GGUFReader(str(out))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "gemma2"
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.1.post_ffw_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert (types["blk.0.attn_q.weight"] == "F16") == (recipe == "F16")
    src = Gemma2Model.from_pretrained(str(folder)).state_dict()
    stored = next(t for t in reader.tensors if t.name == "blk.0.attn_norm.weight")
    want = src["layers.0.input_layernorm.weight"].float() + 1  # llama.cpp's convention
    assert torch.equal(torch.from_numpy(stored.data.copy()).reshape(want.shape), want)

    theirs = Gemma2Model.from_pretrained(str(tmp_path), gguf_file=out.name)
    assert theirs.config.model_type == "gemma2" and theirs.config.head_dim == 128
    r = run_cli("convert", out, tmp_path / "deq", "--to", "diffusers", "--dtype", "fp32")
    assert r.code == 0, r.err
    ours = Gemma2Model.from_pretrained(str(tmp_path / "deq"))
    a, b = theirs.state_dict(), ours.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k].float(), b[k]), k
    key = "layers.0.self_attn.q_proj.weight"
    if recipe == "F16":
        assert torch.equal(b[key], src[key].half().float())
    else:  # quantized, not a float copy
        assert not torch.equal(b[key], src[key].half().float())
    # norms come back as (w + 1) - 1 in float32: w to within float32 rounding near 1
    norm = "layers.1.post_feedforward_layernorm.weight"
    torch.testing.assert_close(b[norm], src[norm], rtol=0, atol=2e-7)
