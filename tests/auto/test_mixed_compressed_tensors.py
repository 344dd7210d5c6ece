"""compressed-tensors folders with one scheme per layer (what ``auto:compressed-tensors`` writes):
one config group per scheme targeting its layers, read back by weightsmith to the numbers the
cost model used (the same kernels' dequantized weights, bit for bit)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from weightsmith.quantize.linear.run import quantize_linear
from weightsmith.verify.fakequant import weight_quantizer

MIX = {
    "blocks.0.attn1.to_v.weight": "int8",
    "blocks.0.attn1.to_out.0.weight": "int4-g32",
    "blocks.0.ffn.net.0.proj.weight": "nvfp4",
    "blocks.0.ffn.net.2.weight": "mxfp4",
    "blocks.1.attn2.to_q.weight": "fp8",
}


def test_mixed_schemes_round_trip_bit_for_bit(wan_transformer, tmp_path):
    from weightsmith.io import open_checkpoint

    dst = tmp_path / "mixed"
    res = quantize_linear(
        wan_transformer, dst, "int8", progress=False, device="cpu", schemes=MIX, label="mix"
    )
    assert {r.name: r.qtype for r in res.layers if r.name in MIX} == MIX
    kept = [r for r in res.layers if r.reason == "per-layer: kept"]
    assert kept and all(r.qtype == "F32" for r in kept)
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "mixed-precision"
    targets = {t: g for g in qc["config_groups"].values() for t in g["targets"]}
    assert set(targets) == {n.removesuffix(".weight") for n in MIX}
    assert targets["blocks.0.ffn.net.0.proj"]["format"] == "nvfp4-pack-quantized"
    assert targets["blocks.0.attn1.to_v"]["format"] == "pack-quantized"
    src = load_file(str(wan_transformer / "diffusion_pytorch_model.safetensors"))
    ck = open_checkpoint(dst)
    try:
        for name, scheme in MIX.items():
            want = weight_quantizer(scheme)(src[name], name, None)[0]
            assert torch.equal(ck.get(name).to(want.dtype), want), name
        other = "blocks.1.attn1.to_k.weight"
        assert torch.equal(ck.get(other), src[other])
    finally:
        ck.close()


def test_the_family_keep_policy_stands_under_a_mix(wan_transformer, tmp_path):
    kept = "condition_embedder.text_embedder.linear_1.weight"  # Wan keeps its embedders in float
    res = quantize_linear(
        wan_transformer,
        tmp_path / "mix",
        "int8",
        progress=False,
        device="cpu",
        schemes={kept: "int8", "blocks.0.attn1.to_q.weight": "int8"},
    )
    by = {r.name: r for r in res.layers}
    assert by[kept].qtype == "F32" and by[kept].reason != "per-layer"
    assert by["blocks.0.attn1.to_q.weight"].qtype == "int8"
