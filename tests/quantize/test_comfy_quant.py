"""ComfyUI's current comfy_quant format (reference comfy-quant.md) end to end on a tiny Wan: the file
each scheme writes, dequantized by ComfyUI's documented rules (comfy-kitchen's own layouts and the
plain arithmetic, never our reader), equals bit for bit what `convert DST --to original --dtype
fp32` gives; the header-metadata variant reads the same; formats we cannot read are refused; the
legacy scaled-fp8 layout refuses e5m2; `verify` scores a comfy candidate."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from verifying import verify_quantized

from weightsmith.quantize.linear.run import quantize_linear

SCHEMES = {
    "fp8-tensor": ("float8_e4m3fn", torch.float8_e4m3fn),
    "fp8-e5m2": ("float8_e5m2", torch.float8_e5m2),
    "int8-tensor": ("int8_tensorwise", torch.int8),
}
# Wan's Linear layers in the original layout (one block): the only ones ComfyUI may take quantized.
BLOCK_LINEARS = [f"blocks.0.{a}.{x}" for a in ("self_attn", "cross_attn") for x in "qkvo"] + [
    "blocks.0.ffn.0",
    "blocks.0.ffn.2",
]
KEPT_LINEARS = {  # kept by the family's policy, with the reason recorded
    "head.head": "head",
    "text_embedding.0": "text embedding",
    "time_projection.1": "time embedding",
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("comfy-quant")


@cache
def _quantized(src: Path, root: Path, scheme: str, fmt: str = "comfy") -> Path:
    dst = root / f"wan-{scheme}-{fmt}.safetensors"
    quantize_linear(src, dst, scheme, format=fmt, progress=False, device="cpu")
    return dst


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def _f32_bits(t: torch.Tensor) -> torch.Tensor:
    assert t.dtype == torch.float32
    return t.contiguous().view(torch.int32)


def _comfy_kitchen_dequantize(w: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """What ComfyUI's loader builds from the file (comfy-kitchen's QuantizedTensor, CPU eager
    backend), dequantized in float32: ComfyUI's compute dtype on CPU."""
    from comfy_kitchen.tensor import QuantizedTensor, TensorCoreFP8Layout, TensorWiseINT8Layout

    name, layout = (
        ("TensorWiseINT8Layout", TensorWiseINT8Layout)
        if fmt == "int8_tensorwise"
        else ("TensorCoreFP8Layout", TensorCoreFP8Layout)
    )
    params = layout.Params(scale=scale.to(torch.float32), orig_dtype=torch.float32, orig_shape=tuple(w.shape))
    return QuantizedTensor(w, name, params).dequantize()


def _plain(path: Path, run_cli) -> dict[str, torch.Tensor]:
    out = path.with_name(path.stem + "-plain.safetensors")
    if not out.exists():
        r = run_cli("convert", path, out, "--to", "original", "--dtype", "fp32")
        assert r.code == 0, r.err
    return load_file(str(out))


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_comfy_quant_file_dequantizes_by_comfyui_rules_to_our_convert(
    scheme, tiny_wan, work, run_cli, one_thread
):
    fmt, stored = SCHEMES[scheme]
    path = _quantized(tiny_wan, work, scheme)
    t, meta = _tensors(path)
    assert "scaled_fp8" not in t and "_quantization_metadata" not in meta  # per-layer tensors only
    confs = {
        k.removesuffix(".comfy_quant"): json.loads(bytes(v.tolist()).decode("utf-8"))
        for k, v in t.items()
        if k.endswith(".comfy_quant")
    }
    for k, v in t.items():
        if k.endswith(".comfy_quant"):
            assert v.dtype == torch.uint8 and v.ndim == 1, k
    assert sorted(confs) == sorted(BLOCK_LINEARS)
    assert all(c == {"format": fmt, "full_precision_matrix_mult": True} for c in confs.values())
    # no quantized tensor outside the listed Linear layers; everything else stays float32
    for k, v in t.items():
        if k.endswith(".comfy_quant"):
            continue
        layer, _, leaf = k.rpartition(".")
        if layer in confs and leaf in ("weight", "weight_scale"):
            continue
        assert v.dtype == torch.float32, k
    for kept in ("patch_embedding.weight", "blocks.0.modulation", "head.modulation", "blocks.0.norm3.weight"):
        assert t[kept].dtype == torch.float32, kept
    plain = _plain(path, run_cli)
    assert sorted(plain) == sorted(k for k in t if not k.endswith((".comfy_quant", ".weight_scale")))
    for layer in confs:
        w, s = t[f"{layer}.weight"], t[f"{layer}.weight_scale"]
        assert w.dtype == stored and w.shape == (256, 256), layer
        assert s.dtype == torch.float32 and s.shape == (), layer
        theirs = _comfy_kitchen_dequantize(w, s, fmt)
        documented = w.to(torch.float32) * s.to(torch.float32)
        assert torch.equal(_f32_bits(theirs), _f32_bits(documented)), layer
        assert torch.equal(_f32_bits(plain[f"{layer}.weight"]), _f32_bits(theirs)), layer
    for k in plain:  # the unquantized tensors come back as stored
        if k.removesuffix(".weight") not in confs:
            assert torch.equal(_f32_bits(plain[k]), _f32_bits(t[k])), k
    rows = {r["name"]: r for r in json.loads(Path(f"{path}.layers.json").read_text())["layers"]}
    for layer in BLOCK_LINEARS:
        assert rows[f"{layer}.weight"]["type"] == scheme
    for layer, reason in KEPT_LINEARS.items():
        assert rows[f"{layer}.weight"]["reason"] == reason and f"{layer}.comfy_quant" not in t
    assert rows["patch_embedding.weight"]["reason"] == "not a Linear weight"


def test_quantized_values_are_comfy_kitchens_own(tiny_wan, work, one_thread):
    """comfy-kitchen, given our scale, quantizes the source weight to our stored bytes (fp8
    e4m3/e5m2 and int8 tensorwise), and our scale is its abs-max / max scale."""
    from comfy_kitchen.tensor import TensorCoreFP8Layout, TensorWiseINT8Layout

    src = load_file(str(tiny_wan / "diffusion_pytorch_model.safetensors"))["blocks.0.attn1.to_q.weight"]
    for scheme, (fmt, stored) in SCHEMES.items():
        t, _ = _tensors(_quantized(tiny_wan, work, scheme))
        w, s = t["blocks.0.self_attn.q.weight"], t["blocks.0.self_attn.q.weight_scale"]
        if fmt == "int8_tensorwise":
            q, params = TensorWiseINT8Layout.quantize(src, scale=s)
            assert torch.equal(params.scale, s) and s == src.abs().max() / 127
            assert torch.equal(q, w)
        else:
            q, params = TensorCoreFP8Layout.quantize(src, dtype=stored)
            assert torch.equal(params.scale, s)
            assert torch.equal(q.view(torch.uint8), w.view(torch.uint8))


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_header_metadata_variant_reads_the_same(prefix, tiny_wan, work, run_cli, one_thread):
    """The same layers marked by `_quantization_metadata` instead of per-layer tensors, under the
    file's names with or without ComfyUI's prefix: the same float32 weights."""
    path = _quantized(tiny_wan, work, "fp8-e5m2")
    t, meta = _tensors(path)
    layers = {}
    for k in [k for k in t if k.endswith(".comfy_quant")]:
        layers[k.removesuffix(".comfy_quant")] = json.loads(bytes(t.pop(k).tolist()))
    other = work / f"header{len(prefix)}.safetensors"
    meta = {**meta, "_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    save_file({prefix + k: v for k, v in t.items()}, str(other), metadata=meta)
    ours, theirs = _plain(path, run_cli), _plain(other, run_cli)
    assert sorted(theirs) == sorted(ours)  # convert --to original writes the plain names
    for k, v in ours.items():
        assert torch.equal(_f32_bits(theirs[k]), _f32_bits(v)), k


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        ("convrot_w4a4", "'convrot_w4a4' (layer blocks.0.self_attn.q) is not supported yet"),
        ("bogus", "unknown ComfyUI"),
    ],
)
def test_formats_we_cannot_read_are_refused(fmt, needle, tiny_wan, work, run_cli, one_thread):
    t, meta = _tensors(_quantized(tiny_wan, work, "fp8-tensor"))
    t["blocks.0.self_attn.q.comfy_quant"] = torch.frombuffer(
        bytearray(json.dumps({"format": fmt}).encode()), dtype=torch.uint8
    )
    bad = work / f"bad-{fmt}.safetensors"
    save_file(t, str(bad), metadata=meta)
    r = run_cli("convert", bad, work / f"bad-{fmt}-plain.safetensors", "--to", "original", "--dtype", "fp32")
    assert r.code == 2 and r.err.count("\n") == 1 and needle in r.words, r.err


def test_mismatched_weight_dtype_is_refused(tiny_wan, work, run_cli, one_thread):
    """ComfyUI would value-cast an e5m2 weight marked float8_e4m3fn; we refuse it instead."""
    t, meta = _tensors(_quantized(tiny_wan, work, "fp8-tensor"))
    t["blocks.0.ffn.0.weight"] = t["blocks.0.ffn.0.weight"].float().to(torch.float8_e5m2)
    bad = work / "bad-dtype.safetensors"
    save_file(t, str(bad), metadata=meta)
    r = run_cli("convert", bad, work / "bad-dtype-plain.safetensors", "--to", "original")
    assert r.code == 2 and "not the 2-D F8_E4M3 weight float8_e4m3fn needs" in r.words, r.err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ("--scheme", "fp8-e5m2", "--format", "comfy-legacy"),
            "reads every legacy scaled-fp8 layer as float8_e4m3fn",
        ),
        (
            ("--scheme", "int8-tensor", "--format", "comfy-legacy"),
            "holds e4m3 weights with one scale per tensor",
        ),
        (("--scheme", "int4", "--format", "comfy"), "cannot be written as comfy"),
        (
            ("--scheme", "int8-tensor", "--format", "compressed-tensors"),
            "cannot be written as compressed-tensors",
        ),
    ],
)
def test_refused_combinations_exit_2_and_leave_nothing(args, needle, tiny_wan, work, run_cli):
    dst = work / "refused.safetensors"
    if "compressed-tensors" in args:
        dst = work / "refused"
    r = run_cli("quantize", tiny_wan, dst, *args)
    assert r.code == 2 and r.err.count("\n") == 1 and needle in r.words, r.err
    assert not dst.exists() and not list(work.glob(".refused*"))


def test_fp8_is_written_per_tensor_in_comfyui_files(tiny_wan, work, one_thread):
    """ComfyUI's fp8 layers take one scalar scale: --scheme fp8 there is fp8-tensor's numbers."""
    fp8, _ = _tensors(_quantized(tiny_wan, work, "fp8"))
    tensor, _ = _tensors(_quantized(tiny_wan, work, "fp8-tensor"))
    assert fp8.keys() == tensor.keys()
    for k, v in fp8.items():
        assert torch.equal(v.reshape(-1).view(torch.uint8), tensor[k].reshape(-1).view(torch.uint8)), k
    rows = json.loads(Path(f"{_quantized(tiny_wan, work, 'fp8')}.layers.json").read_text())
    assert rows["scheme"].startswith("fp8-tensor, comfy (--scheme fp8 is written as fp8-tensor here)")


def test_legacy_layout_is_kept_for_e4m3(tiny_wan, work, run_cli, one_thread):
    path = _quantized(tiny_wan, work, "fp8-tensor", "comfy-legacy")
    t, _ = _tensors(path)
    assert t["scaled_fp8"].dtype == torch.float8_e4m3fn and t["scaled_fp8"].numel() == 0
    assert not any(k.endswith((".comfy_quant", ".weight_scale")) for k in t)
    new, _ = _tensors(_quantized(tiny_wan, work, "fp8-tensor"))
    for layer in BLOCK_LINEARS:  # the same numbers, stored under the legacy names
        assert torch.equal(t[f"{layer}.weight"].view(torch.uint8), new[f"{layer}.weight"].view(torch.uint8))
        assert torch.equal(t[f"{layer}.scale_weight"], new[f"{layer}.weight_scale"])
    assert _plain(path, run_cli).keys() == _plain(_quantized(tiny_wan, work, "fp8-tensor"), run_cli).keys()


def test_load_model_runs_int8_tensorwise_with_the_stored_weights(tiny_wan, work, run_cli, one_thread):
    from weightsmith.load import load_quantized
    from weightsmith.quantize.linear.runtime import QuantLinear

    path = _quantized(tiny_wan, work, "int8-tensor")
    plain = _plain(path, run_cli)
    model = load_quantized(path, backend="reference")
    q = model.blocks[0].attn1.to_q
    assert isinstance(q, QuantLinear) and q.scheme.name == "int8-tensor"
    assert torch.equal(_f32_bits(q.dequantized_weight()), _f32_bits(plain["blocks.0.self_attn.q.weight"]))


@pytest.mark.parametrize(
    ("scheme", "gate"),
    [("fp8-tensor", 10), ("int8-tensor", 10), ("mxfp8", 10), ("nvfp4", 10)],
)
def test_verify_scores_a_comfy_candidate(scheme, gate, tmp_path, one_thread, monkeypatch):
    """Every comfy_quant format is scored against the float pipeline (tiny Wan: the family ComfyUI
    loads natively); the fp4 file scores lower than the 8-bit ones, all stay finite and smaller."""
    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path / "cache"))
    res = verify_quantized(
        tmp_path, "wan", "2.1-t2v", scheme, f"wan-{scheme}-comfy.safetensors", f"latent_sqnr>={gate}"
    )
    assert res.passed and len(res.candidates) >= 1
    c = res.candidates[0]
    assert not c.exact and c.worst["latent_sqnr"] >= gate and c.worst["size_ratio"] < 1
