"""nvfp4 / mxfp4 compressed-tensors folders end to end (Sana, Wan, CogVideoX tiny models): the
config compressed-tensors' own NVFP4A16 / MXFP4A16 presets give, its compressors writing our bytes
from the same weights and scales, its decompressors reading ours back to the weights our convert
gives, the keep policy for rows no block divides, refusals, the reference loader and verify.

What "the same weights" means, exactly: compressed-tensors decompresses fp4 to bfloat16, we to
float32. Our float32 (from ``convert --dtype fp32``) is compared bit for bit with our exact
dequantization, and that float32 cast to bfloat16 bit for bit with compressed-tensors' bfloat16.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_linear_quantize import WIDE, _model, _run
from verifying import verify_quantized

from weightsmith.errors import QuantizationError, UsageError
from weightsmith.families import get_component
from weightsmith.kernels import microscale as ms
from weightsmith.kernels.linear import get_linear_scheme, quantize_weight
from weightsmith.load import load_quantized
from weightsmith.quantize.linear.formats import ct_format, ct_quantization_config
from weightsmith.quantize.linear.policy import LinearPolicy
from weightsmith.quantize.linear.run import quantize_linear
from weightsmith.quantize.linear.runtime import QuantLinear
from weightsmith.quantize.report import sqnr_db
from weightsmith.tiny import Fixture, save_fixture

FP4 = {"nvfp4": ("NVFP4A16", "nvfp4-pack-quantized"), "mxfp4": ("MXFP4A16", "mxfp4-pack-quantized")}
CASES = [(f, s) for f in WIDE for s in FP4]
_ROOT: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _root(tmp_path_factory):
    _ROOT[:] = [tmp_path_factory.mktemp("fp4")]
    yield
    _artifact.cache_clear()
    _source.cache_clear()


@cache
def _source(family: str) -> Path:
    folder = _ROOT[0] / f"{family}-src"
    _model(family).save_pretrained(str(folder))
    return folder


@cache
def _artifact(family: str, scheme: str) -> Path:
    dst = _ROOT[0] / f"{family}-{scheme}"
    quantize_linear(_source(family), dst, scheme, progress=False, device="cpu")
    return dst


def _convert(family: str, scheme: str, run_cli) -> dict[str, torch.Tensor]:
    """``weightsmith convert ARTIFACT --to diffusers --dtype fp32``, once per artifact."""
    out = _ROOT[0] / f"{family}-{scheme}-plain"
    if not out.exists():
        r = run_cli("convert", _artifact(family, scheme), out, "--to", "diffusers", "--dtype", "fp32")
        assert r.code == 0, r.err
    return load_file(str(out / "diffusion_pytorch_model.safetensors"))


def _stored(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return (
        t.view(torch.uint8)
        if t.element_size() == 1
        else t.view(torch.int16 if t.element_size() == 2 else torch.int32)
    )


def _ct(scheme: str):
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor

    return NVFP4PackedCompressor if scheme == "nvfp4" else MXFP4PackedCompressor


@pytest.mark.parametrize("scheme", list(FP4))
def test_config_is_compressed_tensors_preset(scheme):
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    preset, fmt = FP4[scheme]
    qc = ct_quantization_config(get_linear_scheme(scheme), None, ["proj_out"])
    group = qc["config_groups"]["group_0"]
    assert qc["format"] == group["format"] == fmt == ct_format(get_linear_scheme(scheme), None)
    theirs = preset_name_to_scheme(preset, ["Linear"])
    assert group["weights"] == theirs.weights.model_dump(mode="json")
    assert group["input_activations"] is None
    # read back, ours is what compressed-tensors reads back from its own serialized preset
    # (symmetric: its zero-point dtype is not serialized, so it is compared that way too)
    dumped = QuantizationScheme.model_validate(theirs.model_dump(mode="json"))
    assert QuantizationScheme.model_validate(group).weights == dumped.weights
    assert QuantizationScheme.model_validate(group).weights.scale_dtype == theirs.weights.scale_dtype
    assert QuantizationConfig.model_validate(qc).format == fmt


@pytest.mark.parametrize(("family", "scheme"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_compressed_tensors_reads_and_writes_our_bytes(family, scheme, run_cli):
    """Per quantized Linear: its compressor, fed the source weight and our scales, writes our
    bytes; its decompressor (bf16) gives our convert's float32 weight rounded to bf16, bit for bit;
    our convert's float32 is our exact dequantization, bit for bit."""
    from compressed_tensors.quantization import QuantizationScheme

    folder = _artifact(family, scheme)
    cfg = json.loads((folder / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["format"] == FP4[scheme][1] and cfg["_class_name"] == get_component(
        family, "transformer"
    ).class_name(WIDE[family][0])
    ct_scheme = QuantizationScheme.model_validate(qc["config_groups"]["group_0"])
    stored, plain, src = _stored(folder), _convert(family, scheme, run_cli), _model(family).state_dict()
    assert sorted(plain) == sorted(src)
    modules = sorted(k.removesuffix(".weight_packed") for k in stored if k.endswith(".weight_packed"))
    assert modules and all(m not in qc["ignore"] for m in modules)
    comp = _ct(scheme)
    for m in modules:
        w = src[f"{m}.weight"]
        packed, scale = stored[f"{m}.weight_packed"], stored[f"{m}.weight_scale"]
        assert packed.dtype == torch.uint8 and packed.shape == (w.shape[0], w.shape[1] // 2)
        block = 16 if scheme == "nvfp4" else 32
        assert scale.shape == (w.shape[0], w.shape[1] // block)
        if scheme == "nvfp4":
            gs = stored[f"{m}.weight_global_scale"]
            assert scale.dtype == torch.float8_e4m3fn and gs.dtype == torch.float32 and gs.shape == (1,)
            q = ms.quantize_nvfp4(w, convention="compressed-tensors", pad=1)
            exact = ms.dequantize_nvfp4(q)
            state = {"weight": w, "weight_scale": scale.to(torch.float32), "weight_global_scale": gs}
        else:
            assert scale.dtype == torch.uint8 and f"{m}.weight_global_scale" not in stored
            exact = ms.dequantize_mx(ms.quantize_mxfp4(w))
            state = {"weight": w, "weight_scale": ms.e8m0_decode(scale, zero_is_zero=False)}
        out = comp.compress(state, ct_scheme)
        assert torch.equal(out["weight_packed"], packed), m
        assert torch.equal(_bits(out["weight_scale"]), _bits(scale)), m
        local = {k.removeprefix(m + "."): v for k, v in stored.items() if k.startswith(m + ".weight_")}
        back = comp.decompress(local, ct_scheme)["weight"]
        ours = plain[f"{m}.weight"]
        assert ours.dtype == torch.float32 and torch.equal(_bits(ours), _bits(exact)), m
        assert back.dtype == torch.bfloat16 and torch.equal(_bits(back), _bits(ours.to(torch.bfloat16))), m
    for k, v in plain.items():  # everything not quantized is the source, untouched
        if not any(k == f"{m}.weight" for m in modules):
            assert torch.equal(v, src[k]), k


def test_rows_no_block_divides_are_kept_with_the_reason(tmp_path):
    spec = get_component("sana", "transformer").quant
    name = "transformer_blocks.0.attn1.to_q.weight"
    d = LinearPolicy(spec, get_linear_scheme("nvfp4"), [name], []).decide(name, (64, 40))
    assert not d.quantize and d.reason == "row 40 not a multiple of nvfp4 block 16: kept"
    d = LinearPolicy(spec, get_linear_scheme("mxfp4"), [name], []).decide(name, (64, 48))
    assert not d.quantize and "row 48 not a multiple of mxfp4 block 32" in d.reason and "nvfp4" in d.reason
    for s in FP4:
        with pytest.raises(QuantizationError, match="not a multiple"):
            quantize_weight(torch.zeros(4, 40), get_linear_scheme(s))
    # whole runs on the tiny fixtures: Wan's 24-wide rows and CogVideoX's 16-wide rows are kept
    # with the reason (and listed in the config's ignore), the rest written; Sana's are all narrow
    for family, variant, scheme, reason in [
        ("wan", "2.1-t2v", "nvfp4", "row 24 not a multiple of nvfp4 block 16: kept"),
        ("wan", "2.1-t2v", "mxfp4", "row 24 not a multiple of mxfp4 block 32: kept"),
        ("cogvideox", "5b", "mxfp4", "row 16 not a multiple of mxfp4 block 32: kept (nvfp4 would fit)"),
    ]:
        src = save_fixture(Fixture(family, "transformer", variant, "diffusers", "diffusers-folder"), tmp_path)
        dst = tmp_path / f"{family}-{scheme}-tiny"
        r = quantize_linear(src, dst, scheme, progress=False, device="cpu")
        kept = [x.name for x in r.layers if x.reason == reason]
        assert kept and any(x.qtype == scheme for x in r.layers), (family, scheme)
        ignore = json.loads((dst / "config.json").read_text())["quantization_config"]["ignore"]
        assert all(k.removesuffix(".weight") in ignore for k in kept)
    src = save_fixture(Fixture("sana", "transformer", "1.0", "diffusers", "diffusers-folder"), tmp_path)
    with pytest.raises(UsageError, match="do not split into blocks of 16"):
        quantize_linear(src, tmp_path / "sana-nvfp4-tiny", "nvfp4", progress=False)


def _variant(tmp_path: Path, target: str, value: float) -> Path:
    """The Sana source with one weight element replaced by ``value``."""
    state = _model("sana").state_dict()
    bad = dict(state)
    bad[target] = state[target].clone()
    bad[target][1, 3] = value
    folder = tmp_path / f"src-{value}"
    model = _model("sana").__class__(**WIDE["sana"][1])
    model.load_state_dict(bad)
    model.save_pretrained(str(folder))
    return folder


# NaN/Inf: refused naming the tensor. FLT_MAX: nvfp4's dequantization (compressed-tensors'
# arithmetic: (s / G) * 6) overflows to inf, so it is refused as never-written; mxfp4's E8M0
# clamp keeps it finite (and written).
REFUSED = [
    ("nvfp4", float("nan"), "NaN or Inf"),
    ("mxfp4", float("-inf"), "NaN or Inf"),
    ("nvfp4", torch.finfo(torch.float32).max, "decodes to NaN or infinite"),
]


@pytest.mark.parametrize(("scheme", "value", "needle"), REFUSED, ids=[f"{s}-{v}" for s, v, _ in REFUSED])
def test_non_finite_is_exit_2_naming_the_tensor(tmp_path, run_cli, scheme, value, needle):
    target = "transformer_blocks.0.attn1.to_q.weight"
    dst = tmp_path / "out"
    r = run_cli("quantize", _variant(tmp_path, target, value), dst, "--scheme", scheme)
    assert r.code == 2 and target in r.err and needle in r.err, r.err
    assert len(r.err.strip().splitlines()) == 1, r.err  # one line: message; hint
    assert not dst.exists()


def test_refusals(tmp_path):
    src = _source("sana")
    with pytest.raises(UsageError, match="weight-only"):
        quantize_linear(src, tmp_path / "x", "nvfp4", activations="fp8", progress=False)
    with pytest.raises(UsageError, match="compressed-tensors folders"):
        quantize_linear(src, tmp_path / "x.safetensors", "mxfp4", progress=False)


@pytest.mark.parametrize("scheme", list(FP4))
def test_reference_loader_runs_the_stored_weights(scheme, run_cli, one_thread):
    plain = _convert("sana", scheme, run_cli)
    model = load_quantized(_artifact("sana", scheme), backend="auto")
    q = model.transformer_blocks[0].attn1.to_q
    assert isinstance(q, QuantLinear) and q.scheme.name == scheme
    w = plain["transformer_blocks.0.attn1.to_q.weight"]
    assert torch.equal(_bits(q.dequantized_weight()), _bits(w))
    ref, out = _run(_model("sana"), "sana"), _run(model, "sana")
    assert torch.isfinite(out).all() and sqnr_db(ref, out) > 10


def test_verify_scores_an_nvfp4_candidate(tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path / "cache"))
    res = verify_quantized(tmp_path, "sana", "1.0", "nvfp4", "sana-nvfp4", "latent_sqnr>=0")
    assert res.passed and len(res.candidates) >= 1
    c = res.candidates[0]
    scored = {k: v for k, v in c.worst.items() if v is not None}  # flicker is None for images
    assert not c.exact and c.worst["latent_sqnr"] > 10 and c.worst["size_ratio"] < 1
    assert all(math.isfinite(v) for v in scored.values()), scored


@pytest.mark.parametrize(("family", "scheme"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_compressed_tensors_model_free_dequantizer_agrees(family, scheme, run_cli):
    """compressed-tensors' model-free dequantizer, driven by our config.json, reads the whole folder:
    the same tensor names as our convert, unquantized ones identical, quantized ones equal to our
    float32 rounded to bf16 (its fp4 decompression is bf16), bit for bit."""
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer

    folder = _artifact(family, scheme)
    stored = _stored(folder)
    theirs = CompressedTensorsDequantizer(folder, dtype=torch.float32).validate(dict(stored))
    ours = _convert(family, scheme, run_cli)
    assert sorted(theirs) == sorted(ours)
    quantized = {k.removesuffix("_packed") for k in stored if k.endswith(".weight_packed")}
    assert quantized
    for k, v in ours.items():
        want = v.to(torch.bfloat16).to(torch.float32) if k in quantized else v
        assert theirs[k].dtype == torch.float32 and torch.equal(_bits(theirs[k]), _bits(want)), k
