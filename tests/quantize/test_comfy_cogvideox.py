"""ComfyUI files of CogVideoX, in ComfyUI's native CogVideoX names, checked against ComfyUI's rules
as read (never against our own writer or key table): comfy/model_detection.py's cogvideox branch
(which config it derives from which shapes), the state dict of comfy/ldm/cogvideo/model.py's
CogVideoXTransformer3DModel (every key and shape, written out below), and the comfy_quant
dequantization rules of the Wan tests (reused). Each format's file dequantizes to exactly what
`weightsmith convert DST --to diffusers --dtype fp32` gives; `weightsmith.load` and `verify` take
the file. The tiny models are 64 wide with head dim 64 and 16 latent channels: what ComfyUI's
detection assumes of every CogVideoX (cogvideox/tiny.py comfy_tiny_transformer_config)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_comfy_microscale import _kitchen_dequantize, _rules_dequantize
from test_comfy_quant import _comfy_kitchen_dequantize
from verifying import verify_quantized

from weightsmith.quantize.linear.run import quantize_linear

VARIANTS = ("2b", "5b", "5b-i2v", "1.5-5b-i2v")
# --scheme -> (comfy_quant format, how ComfyUI decodes it); "fp8-legacy" is --format comfy-legacy.
FORMATS = {
    "fp8-tensor": "float8_e4m3fn",
    "fp8-e5m2": "float8_e5m2",
    "int8-tensor": "int8_tensorwise",
    "mxfp8": "mxfp8",
    "nvfp4": "nvfp4",
    "fp8-legacy": "scaled_fp8",
}
# ComfyUI's CogVideoXBlock attributes -> the Diffusers module holding the same tensor (read off
# both classes: same Linear/LayerNorm, same shapes); ComfyUI's top level likewise.
COMFY_BLOCK = {
    "norm1.linear": "norm1.linear",
    "norm1.norm": "norm1.norm",
    "q": "attn1.to_q",
    "k": "attn1.to_k",
    "v": "attn1.to_v",
    "norm_q": "attn1.norm_q",
    "norm_k": "attn1.norm_k",
    "attn_out": "attn1.to_out.0",
    "norm2.linear": "norm2.linear",
    "norm2.norm": "norm2.norm",
    "ff_proj": "ff.net.0.proj",
    "ff_out": "ff.net.2",
}
COMFY_TOP = {
    "time_embedding_linear_1": "time_embedding.linear_1",
    "time_embedding_linear_2": "time_embedding.linear_2",
    "ofs_embedding_linear_1": "ofs_embedding.linear_1",
    "ofs_embedding_linear_2": "ofs_embedding.linear_2",
}
QUANTIZED = ("q", "k", "v", "attn_out", "ff_proj", "ff_out")  # the block Linears the policy quantizes
KEPT = {  # ComfyUI's other Linears, kept by the family's policy with this reason
    "patch_embed.text_proj": "patch/text embedding",
    "time_embedding_linear_1": "time embedding",
    "time_embedding_linear_2": "time embedding",
    "blocks.0.norm1.linear": "modulation",
    "blocks.1.norm2.linear": "modulation",
    "norm_out.linear": "modulation",
    "proj_out": "head",
}
AUX = (".comfy_quant", ".weight_scale", ".weight_scale_2", ".input_scale", ".scale_weight")


def _config(variant: str) -> dict:
    from weightsmith.families.cogvideox.tiny import comfy_tiny_transformer_config

    return comfy_tiny_transformer_config(variant)


def diffusers_name(comfy_key: str) -> str:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)\.(weight|bias)", comfy_key)
    if m:
        return f"transformer_blocks.{m.group(1)}.{COMFY_BLOCK[m.group(2)]}.{m.group(3)}"
    module, _, param = comfy_key.rpartition(".")
    return f"{COMFY_TOP.get(module, module)}.{param}"


def comfyui_state_keys(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every key (and shape) of ComfyUI's CogVideoXTransformer3DModel state dict for ``cfg``,
    built with ComfyUI's defaults where its detection sets nothing (1.0 sample 60x90x49, 226
    text tokens; out_channels 16)."""
    dim, hd, t = (
        cfg["num_attention_heads"] * cfg["attention_head_dim"],
        cfg["attention_head_dim"],
        cfg["time_embed_dim"],
    )
    p, pt, cin = cfg["patch_size"], cfg["patch_size_t"], cfg["in_channels"]
    keys: dict[str, tuple[int, ...]] = {}

    def lin(name: str, out: int, inn: int) -> None:
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (out, inn), (out,)

    def norm(name: str, n: int) -> None:
        keys[f"{name}.weight"], keys[f"{name}.bias"] = (n,), (n,)

    if pt is None:
        keys["patch_embed.proj.weight"], keys["patch_embed.proj.bias"] = (dim, cin, p, p), (dim,)
    else:
        lin("patch_embed.proj", dim, cin * p * p * pt)
    lin("patch_embed.text_proj", dim, cfg["text_embed_dim"])
    if cfg.get("use_learned_positional_embeddings") or not cfg.get("use_rotary_positional_embeddings"):
        # a persistent buffer only when learned; for 2B it is the table ComfyUI's detection needs
        keys["patch_embed.pos_embedding"] = (1, 226 + (60 // p) * (90 // p) * ((49 - 1) // 4 + 1), dim)
    lin("time_embedding_linear_1", t, dim)
    lin("time_embedding_linear_2", t, t)
    if cfg.get("ofs_embed_dim"):
        o = cfg["ofs_embed_dim"]
        lin("ofs_embedding_linear_1", o, o)
        lin("ofs_embedding_linear_2", o, o)
    for i in range(cfg["num_layers"]):
        b = f"blocks.{i}"
        for n in ("norm1", "norm2"):
            lin(f"{b}.{n}.linear", 6 * dim, t)
            norm(f"{b}.{n}.norm", dim)
        for x in ("q", "k", "v", "attn_out"):
            lin(f"{b}.{x}", dim, dim)
        norm(f"{b}.norm_q", hd)
        norm(f"{b}.norm_k", hd)
        lin(f"{b}.ff_proj", 4 * dim, dim)
        lin(f"{b}.ff_out", dim, 4 * dim)
    norm("norm_final", dim)
    lin("norm_out.linear", 2 * dim, t)
    norm("norm_out.norm", dim)
    lin("proj_out", p * p * (pt or 1) * 16, dim)
    return keys


def comfyui_detect(shapes: dict[str, tuple[int, ...]]) -> dict:
    """model_detection's cogvideox branch, as read: what ComfyUI builds from the file's shapes."""
    assert "blocks.0.norm1.linear.weight" in shapes  # the key ComfyUI's detection keys on
    w = shapes["blocks.0.norm1.linear.weight"]
    out = {"dim": w[0] // 6, "num_attention_heads": (w[0] // 6) // 64, "time_embed_dim": w[1]}
    n = 0
    while any(k.startswith(f"blocks.{n}.") for k in shapes):  # its count_blocks
        n += 1
    out["num_layers"] = n
    proj = shapes["patch_embed.proj.weight"]
    if len(proj) == 4:
        out |= {"in_channels": proj[1], "patch_size": proj[2], "patch_size_t": None}
    else:
        out |= {"in_channels": proj[1] // 8, "patch_size": 2, "patch_size_t": 2}
    out["text_embed_dim"] = shapes["patch_embed.text_proj.weight"][1]
    if "ofs_embedding_linear_1.weight" in shapes:
        out["ofs_embed_dim"] = shapes["ofs_embedding_linear_1.weight"][1]
    out["learned_positions"] = "patch_embed.pos_embedding" in shapes
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("comfy-cog")


@cache
def _source(variant: str, root: Path) -> Path:
    from weightsmith.families import get_component

    torch.manual_seed(0)
    model = get_component("cogvideox", "transformer").model_class(variant)(**_config(variant))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    folder = root / variant / "transformer"
    model.save_pretrained(str(folder))
    return folder


@cache
def _quantized(variant: str, scheme: str, root: Path) -> Path:
    dst = root / f"{variant}-{scheme}.safetensors"
    fmt = "comfy-legacy" if scheme == "fp8-legacy" else "comfy"
    real = "fp8-tensor" if scheme == "fp8-legacy" else scheme
    quantize_linear(_source(variant, root), dst, real, format=fmt, progress=False, device="cpu")
    return dst


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _plain(path: Path, run_cli) -> dict[str, torch.Tensor]:
    out = path.with_name(path.stem + "-plain")
    if not out.exists():
        r = run_cli("convert", path, out, "--to", "diffusers", "--dtype", "fp32")
        assert r.code == 0, r.err
    return load_file(str(out / "diffusion_pytorch_model.safetensors"))


def _bits(t: torch.Tensor) -> torch.Tensor:
    assert t.dtype == torch.float32
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("variant", VARIANTS)
def test_file_satisfies_comfyui_detection_and_module_keys(variant, work, one_thread):
    cfg = _config(variant)
    path = _quantized(variant, "fp8-tensor", work)
    t = _tensors(path)
    shapes = {k: tuple(v.shape) for k, v in t.items() if not k.endswith(AUX)}
    found = comfyui_detect(shapes)
    want = {
        "dim": cfg["num_attention_heads"] * cfg["attention_head_dim"],
        "num_attention_heads": cfg["num_attention_heads"],
        "time_embed_dim": cfg["time_embed_dim"],
        "num_layers": cfg["num_layers"],
        "in_channels": cfg["in_channels"],
        "patch_size": cfg["patch_size"],
        "patch_size_t": cfg["patch_size_t"],
        "text_embed_dim": cfg["text_embed_dim"],
        # ComfyUI: a stored table means absolute (sincos) positions, none means RoPE
        "learned_positions": variant in ("2b", "5b-i2v"),
    }
    if cfg.get("ofs_embed_dim"):
        want["ofs_embed_dim"] = cfg["ofs_embed_dim"]
    assert found == want
    assert shapes == comfyui_state_keys(cfg)  # every key ComfyUI's module expects, nothing else
    confs = {
        k.removesuffix(".comfy_quant"): json.loads(bytes(v.tolist()))
        for k, v in t.items()
        if k.endswith(".comfy_quant")
    }
    assert sorted(confs) == sorted(f"blocks.{i}.{x}" for i in range(cfg["num_layers"]) for x in QUANTIZED)
    assert all(c["format"] == "float8_e4m3fn" for c in confs.values())
    for k, v in t.items():  # no quantized tensor outside those Linears
        layer, _, leaf = k.rpartition(".")
        if not k.endswith(".comfy_quant") and not (layer in confs and leaf in ("weight", "weight_scale")):
            assert v.dtype in (torch.float32, torch.float64), k  # as saved (diffusers' table: float64)
    rows = {r["name"]: r for r in json.loads(Path(f"{path}.layers.json").read_text())["layers"]}
    for layer, reason in KEPT.items():
        assert rows[f"{layer}.weight"]["reason"] == reason, layer
    if variant == "2b":  # the table ComfyUI's detection needs is diffusers' own sincos buffer
        from weightsmith.families import get_component

        model = get_component("cogvideox", "transformer").model_class(variant)(**cfg)
        assert torch.equal(t["patch_embed.pos_embedding"], model.patch_embed.pos_embedding.float())


@pytest.mark.parametrize("scheme", list(FORMATS))
def test_every_format_dequantizes_by_comfyui_rules_to_convert(scheme, work, run_cli, one_thread):
    variant, fmt = "1.5-5b-i2v", FORMATS[scheme]
    cfg = _config(variant)
    t = _tensors(_quantized(variant, scheme, work))
    plain = _plain(_quantized(variant, scheme, work), run_cli)
    expected = comfyui_state_keys(cfg)
    assert sorted(plain) == sorted(diffusers_name(k) for k in expected)
    if fmt == "scaled_fp8":
        assert t.pop("scaled_fp8").dtype == torch.float8_e4m3fn
    layers = {k.rpartition(".")[0] for k in t if k.endswith((".weight_scale", ".scale_weight"))}
    assert sorted(layers) == sorted(f"blocks.{i}.{x}" for i in range(cfg["num_layers"]) for x in QUANTIZED)
    for layer in layers:
        shape = expected[f"{layer}.weight"]
        if fmt in ("mxfp8", "nvfp4"):
            theirs = _kitchen_dequantize(fmt, t, layer, shape)
            rules = _rules_dequantize(fmt, t, layer, shape)
        else:
            w = t[f"{layer}.weight"]
            s = t[f"{layer}.scale_weight" if fmt == "scaled_fp8" else f"{layer}.weight_scale"]
            assert w.shape == shape and s.shape in ((), (1,)), layer
            theirs = _comfy_kitchen_dequantize(
                w, s.reshape(()), "float8_e4m3fn" if fmt == "scaled_fp8" else fmt
            )
            rules = w.to(torch.float32) * s.to(torch.float32)
        assert torch.equal(_bits(theirs), _bits(rules)), layer
        assert torch.equal(_bits(plain[diffusers_name(f"{layer}.weight")]), _bits(theirs)), layer
    for k in expected:  # everything else comes back as stored
        if k.rpartition(".")[0] not in layers or k.endswith(".bias"):
            assert torch.equal(_bits(plain[diffusers_name(k)]), _bits(t[k])), k


def test_load_runs_the_stored_numbers(work, run_cli, one_thread):
    from weightsmith.load import load_quantized
    from weightsmith.quantize.linear.runtime import QuantLinear

    path = _quantized("5b-i2v", "fp8-tensor", work)
    plain = _plain(path, run_cli)
    model = load_quantized(path, backend="reference")
    q = model.transformer_blocks[1].ff.net[2]
    assert isinstance(q, QuantLinear) and q.scheme.name == "fp8-tensor"
    assert torch.equal(_bits(q.dequantized_weight()), _bits(plain["transformer_blocks.1.ff.net.2.weight"]))


def test_verify_scores_a_cogvideox_comfy_candidate(tmp_path, one_thread, monkeypatch):
    """The tiny 2B pipeline (its comfy file carries the sincos table) scored against float."""
    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path / "cache"))
    res = verify_quantized(
        tmp_path, "cogvideox", "2b", "fp8-tensor", "cog-fp8.safetensors", "latent_sqnr>=10"
    )
    assert res.passed and len(res.candidates) == 1
    c = res.candidates[0]
    assert not c.exact and c.worst["latent_sqnr"] >= 10 and c.worst["size_ratio"] < 1


def test_sat_source_gives_the_same_file(work, run_cli, one_thread):
    """From the SAT layout (fused qkv, 12-chunk adaLN) the ComfyUI file is the same, bit for bit:
    q/k/v split out of query_key_value are quantized like Diffusers' to_q/to_k/to_v."""
    sat = work / "5b-sat"
    r = run_cli("convert", _source("5b-i2v", work), sat, "--to", "sat")
    assert r.code == 0, r.err
    dst = work / "5b-sat-fp8.safetensors"
    quantize_linear(sat, dst, "fp8-tensor", format="comfy", progress=False, device="cpu")
    ours, ref = _tensors(dst), _tensors(_quantized("5b-i2v", "fp8-tensor", work))
    assert sorted(ours) == sorted(ref)
    for k, v in ref.items():
        assert torch.equal(ours[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k
