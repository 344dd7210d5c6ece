"""INT8/FP8/INT4 safetensors end to end: our kernels against compressed-tensors' own compressor and
decompressor, our files against compressed-tensors' model-free dequantizer and ComfyUI's scaled-fp8
contract, the quantized models' outputs against full precision on every family, and the torchao
fast path against the reference path."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tolerances import assert_forward_close
from torch import nn

from weightsmith.errors import UsageError
from weightsmith.families import get_component
from weightsmith.kernels import linear as linear_schemes
from weightsmith.kernels.linear import (
    LINEAR_SCHEMES,
    dequantize,
    get_linear_scheme,
    pack_int32,
    quantize_weight,
    unpack_int32,
)
from weightsmith.load import load_model, load_quantized
from weightsmith.quantize.keep import parse_keep_blocks
from weightsmith.quantize.linear.formats import (
    ct_format,
    ct_quantization_config,
    ct_tensors,
)
from weightsmith.quantize.linear.run import quantize_linear
from weightsmith.quantize.linear.runtime import QuantLinear
from weightsmith.quantize.report import sqnr_db
from weightsmith.tiny import Fixture, save_fixture

# Tiny models of the real classes whose Linear rows are 128 or 256 wide, so every int4 group fits.
WIDE = {
    "wan": (
        "2.1-t2v",
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=64,
            in_channels=4,
            out_channels=4,
            text_dim=32,
            freq_dim=32,
            ffn_dim=256,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
    ),
    "sana": (
        "1.0",
        dict(
            patch_size=1,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            attention_head_dim=32,
            num_attention_heads=4,
            num_cross_attention_heads=4,
            cross_attention_head_dim=32,
            cross_attention_dim=128,
            caption_channels=32,
            sample_size=8,
        ),
    ),
    "cogvideox": (
        "5b",
        dict(
            num_attention_heads=2,
            attention_head_dim=64,
            in_channels=4,
            out_channels=4,
            time_embed_dim=8,
            text_embed_dim=16,
            num_layers=2,
            sample_width=8,
            sample_height=8,
            sample_frames=5,
            patch_size=2,
            max_text_seq_length=4,
            use_rotary_positional_embeddings=True,
        ),
    ),
}
CT_SCHEMES = ["int8", "fp8", "fp8-tensor", "int4", "int4-g64", "int4-g32", "int4-g16", "int4-asym"]
W8A8 = [("int8", "int8"), ("fp8", "fp8")]
CASES = [(f, s, None) for f in WIDE for s in CT_SCHEMES] + [(f, s, a) for f in WIDE for s, a in W8A8]
COMFY = ["fp8-tensor", "fp8-e5m2"]
# The legacy scaled-fp8 layout holds e4m3 only (ComfyUI reads every legacy layer as e4m3).
COMFY_LEGACY = ["fp8-tensor"]
OUTPUT_CASES = (
    [(*c, None) for c in CASES]
    + [("wan", s, None, "comfy") for s in COMFY]
    + [("wan", s, None, "comfy-legacy") for s in COMFY_LEGACY]
)
# Lower bounds of the model output's SQNR against full precision (dB), weight-only unless noted.
OUTPUT_SQNR = {
    "int8": 45.0,
    "int8+int8": 42.0,
    "fp8": 33.0,
    "fp8+fp8": 31.0,
    "fp8-tensor": 33.0,
    "fp8-e5m2": 27.0,
    "int4": 21.0,
    "int4-g64": 21.0,
    "int4-g32": 21.0,
    "int4-g16": 21.0,
    "int4-asym": 21.0,
}


def _ids(cases) -> list[str]:
    return ["-".join(x for x in c if x) for c in cases]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("linear")


@cache
def _model(family: str) -> nn.Module:
    variant, cfg = WIDE[family]
    torch.manual_seed(0)
    model = get_component(family, "transformer").model_class(variant)(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


def _inputs(family: str) -> dict:
    g = torch.Generator().manual_seed(1)
    if family == "wan":
        return dict(
            hidden_states=torch.randn(1, 4, 2, 8, 8, generator=g),
            timestep=torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
        )
    if family == "sana":
        return dict(
            hidden_states=torch.randn(1, 4, 8, 8, generator=g),
            timestep=torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 5, 32, generator=g),
        )
    return dict(
        hidden_states=torch.randn(1, 2, 4, 8, 8, generator=g),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 4, 16, generator=g),
    )


def _run(model: nn.Module, family: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs(family), return_dict=False)[0]


_ROOT: list[Path] = []


def _source(family: str) -> Path:
    folder = _ROOT[0] / f"{family}-src"
    if not folder.exists():
        _model(family).save_pretrained(str(folder))
    return folder


def _artifact(family: str, scheme: str, acts: str | None = None, fmt: str | None = None) -> Path:
    """Each (family, scheme, activations, format) is quantized once per module."""
    return _build(family, scheme, acts, fmt)


@cache
def _build(family: str, scheme: str, acts: str | None, fmt: str | None) -> Path:
    suffix = ".safetensors" if fmt in ("comfy", "comfy-legacy") else ""
    legacy = "-legacy" if fmt == "comfy-legacy" else ""
    dst = _ROOT[0] / f"{family}-{scheme}-{acts or 'wo'}{legacy}{suffix}"
    quantize_linear(_source(family), dst, scheme, activations=acts, format=fmt, progress=False, device="cpu")
    return dst


def _report(path: Path) -> dict[str, dict]:
    rows = json.loads(path.with_name(path.name + ".layers.json").read_text())["layers"]
    return {r["name"]: r for r in rows}


@cache
def _loaded(family: str, scheme: str, acts: str | None, fmt: str | None, backend: str) -> nn.Module:
    return load_quantized(_artifact(family, scheme, acts, fmt), backend=backend)


@cache
def _output(family: str, scheme: str, acts: str | None, fmt: str | None, backend: str) -> torch.Tensor:
    return _run(_loaded(family, scheme, acts, fmt, backend), family)


@pytest.fixture(scope="module", autouse=True)
def _root(work):
    _ROOT[:] = [work]
    yield
    _build.cache_clear()
    _loaded.cache_clear()
    _output.cache_clear()


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Compare 1-byte floats by their bits (fp8 has no ==)."""
    return t.view(torch.uint8) if t.is_floating_point() and t.element_size() == 1 else t


# ---------------------------------------------------------------------------------------------
# Kernels and the format, tensor by tensor, against compressed-tensors' own code


def _ct_scheme(scheme: str, acts: str | None):
    from compressed_tensors.quantization import QuantizationScheme

    group = ct_quantization_config(get_linear_scheme(scheme), acts, [])["config_groups"]["group_0"]
    return QuantizationScheme.model_validate(group)


def _weight(out: int = 72, inn: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(out, inn, generator=g) * 0.05
    w[3, 7] = 1.5  # an outlier
    w[5] = 0.0  # an all-zero row
    w[9] = w[9].abs() + 0.01  # a row with no negative value (asymmetric: range widened to 0)
    return w


@pytest.mark.parametrize(
    ("scheme", "acts"),
    [(s, None) for s in CT_SCHEMES] + W8A8,
    ids=_ids([(s, None) for s in CT_SCHEMES] + W8A8),
)
def test_compressed_tensors_compressor_gives_our_tensors_and_decompresses_them(scheme, acts):
    """Fed our float weight and our scales, compressed-tensors' registered compressor writes exactly
    the tensors we write (names, dtypes, shapes, packing, zero points); its decompressor turns ours
    into exactly our dequantized weight."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format

    ls = get_linear_scheme(scheme)
    ct = _ct_scheme(scheme, acts)
    fmt = ct_format(ls, acts)
    assert infer_module_format(nn.Linear, ct).value == fmt
    comp = BaseCompressor.get_value_from_registry(fmt)
    w = _weight()
    qw = quantize_weight(w, ls)
    ours = dict(ct_tensors("m", qw, fmt))
    assert set(comp.compression_param_names(ct)) == {k.removeprefix("m.") for k in ours}
    given = {"weight": w, "weight_scale": qw.scale}
    if qw.zero_point is not None:
        given["weight_zero_point"] = qw.zero_point
    theirs = comp.compress(given, ct)
    assert sorted(theirs) == sorted(k.removeprefix("m.") for k in ours)
    for k, v in theirs.items():
        mine = ours[f"m.{k}"]
        assert v.dtype == mine.dtype and v.shape == mine.shape, k
        assert torch.equal(_bits(v), _bits(mine)), k
    back = comp.decompress({k.removeprefix("m."): v for k, v in ours.items()}, ct)["weight"]
    assert back.dtype == torch.float32 and torch.equal(back, qw.dequantize())
    assert sqnr_db(w, back) > {"int8": 35.0, "fp8": 25.0, "fp8-tensor": 20.0}.get(scheme, 12.0)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", [(5, 13), (3, 40), (16, 8), (1, 64), (24, 1)])
def test_packing_is_compressed_tensors_packing(bits, shape, monkeypatch):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32

    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    q = torch.randint(lo, hi + 1, shape, generator=torch.Generator().manual_seed(0)).to(torch.int8)
    for dim in (0, 1):
        ours = pack_int32(q, bits, dim=dim)
        assert torch.equal(ours, pack_to_int32(q, bits, packed_dim=dim))
        assert torch.equal(unpack_int32(ours, bits, shape[dim], dim=dim), q)
        assert torch.equal(unpack_from_int32(ours, bits, torch.Size(shape), packed_dim=dim), q)
        # the arithmetic path big-endian hosts take
        monkeypatch.setattr(linear_schemes, "sys", SimpleNamespace(byteorder="big"))
        assert torch.equal(pack_int32(q, bits, dim=dim, rows_per_chunk=2), ours)
        assert torch.equal(unpack_int32(ours, bits, shape[dim], dim=dim), q)
        monkeypatch.undo()


def test_kernels_are_exact_where_they_should_be():
    w = _weight()
    int8 = quantize_weight(w, get_linear_scheme("int8"))
    assert int8.data.dtype == torch.int8 and int(int8.data.abs().max()) == 127
    assert torch.equal(int8.scale[5], torch.ones(1))  # all-zero row: scale 1, values 0
    assert not int8.data[5].any()
    asym = quantize_weight(w, get_linear_scheme("int4-asym"))
    assert asym.zero_point is not None and int(asym.data.min()) >= -8 and int(asym.data.max()) <= 7
    assert int(asym.data.min()) == -8 and int(asym.data.max()) == 7  # the full 16 levels are used
    for name in ("int8", "int4", "int4-asym", "fp8"):  # exact zeros stay exact zeros
        qw = quantize_weight(w, get_linear_scheme(name))
        assert not dequantize(qw.values(), qw.scale, qw.zero_point, qw.scheme)[w == 0].any()
    for name in ("fp8", "fp8-tensor", "fp8-e5m2"):
        qw = quantize_weight(w, get_linear_scheme(name))
        assert qw.data.dtype == LINEAR_SCHEMES[name].fp8_dtype
        assert float(qw.data.float().abs().max()) == LINEAR_SCHEMES[name].fmax
    assert quantize_weight(w, get_linear_scheme("fp8-tensor")).scale.shape == (1,)


# ---------------------------------------------------------------------------------------------
# Whole files


@pytest.mark.parametrize(("family", "scheme", "acts"), CASES, ids=_ids(CASES))
def test_compressed_tensors_dequantizer_equals_our_convert(family, scheme, acts, run_cli):
    """compressed-tensors' own model-free dequantizer (its registered compressor's decompress per
    module, driven by our config.json) gives exactly what `weightsmith convert ... --to diffusers
    --dtype fp32` gives, tensor for tensor."""
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
    from compressed_tensors.quantization import QuantizationConfig

    folder = _artifact(family, scheme, acts)
    cfg = json.loads((folder / "config.json").read_text())
    qc = QuantizationConfig.model_validate(cfg["quantization_config"])
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"
    assert qc.format == ct_format(get_linear_scheme(scheme), acts)
    assert cfg["_class_name"] == get_component(family, "transformer").class_name(WIDE[family][0])
    files = sorted(folder.glob("*.safetensors"))
    stored: dict[str, torch.Tensor] = {}
    for f in files:
        stored.update(load_file(str(f)))
    theirs = CompressedTensorsDequantizer(folder, dtype=torch.float32).validate(dict(stored))
    out = folder.with_name(folder.name + "-plain")
    r = run_cli("convert", folder, out, "--to", "diffusers", "--dtype", "fp32")
    assert r.code == 0, r.err
    ours = load_file(str(out / "diffusion_pytorch_model.safetensors"))
    assert sorted(ours) == sorted(theirs) == sorted(_model(family).state_dict())
    for k, v in ours.items():
        assert v.dtype == theirs[k].dtype == torch.float32 and torch.equal(v, theirs[k]), k
    quantized = [k for k in ours if f"{k}_scale" in stored]
    assert quantized and all(not torch.equal(ours[k], _model(family).state_dict()[k]) for k in quantized)


@pytest.mark.parametrize(
    ("family", "scheme", "acts", "fmt"),
    OUTPUT_CASES,
    ids=_ids(OUTPUT_CASES),
)
def test_output_close_to_full_precision_and_torchao_matches_reference(family, scheme, acts, fmt):
    """Every family and scheme: the quantized model's output is near full precision; the torchao
    tensors hold our stored numbers (not re-quantized) and compute what the reference path does."""
    path = _artifact(family, scheme, acts, fmt)
    ref = _run(_model(family), family)
    key = scheme + (f"+{acts}" if acts else "")
    reference = _output(family, scheme, acts, fmt, "reference")
    assert sqnr_db(ref, reference) > OUTPUT_SQNR[key], (key, sqnr_db(ref, reference))
    m_ref = _loaded(family, scheme, acts, fmt, "reference")
    m_ao = _loaded(family, scheme, acts, fmt, "torchao")
    checked = 0
    for name, mod in m_ref.named_modules():
        if isinstance(mod, QuantLinear):
            ao = m_ao.get_submodule(name).weight
            # built from our stored numbers: same values, same weight, bit for bit
            assert torch.equal(ao.qdata.view(torch.uint8), mod.quantized_weight().values().view(torch.uint8))
            assert torch.equal(ao.dequantize(), mod.dequantized_weight()), name
            checked += 1
    assert checked == sum(1 for r in _report(path).values() if r["type"] == scheme) > 0
    fast = _output(family, scheme, acts, fmt, "torchao")
    # weight-only: the same weights, only the matmul's rounding differs; W8A8: the activations'
    # rounding can flip a step where torchao's and our float arithmetic differ in the last bit
    assert sqnr_db(reference, fast) > (45.0 if acts else 90.0), sqnr_db(reference, fast)
    auto = load_model(path)  # the registered loader: torchao when installed
    assert_forward_close(_run(auto, family), fast)


def test_int8_beats_fp8_beats_int4_on_every_family():
    for family in WIDE:
        ref = _run(_model(family), family)
        s = {k: sqnr_db(ref, _output(family, k, None, None, "reference")) for k in ("int8", "fp8", "int4")}
        assert s["int8"] > s["fp8"] > s["int4"], (family, s)


@pytest.mark.parametrize("scheme", COMFY_LEGACY)
def test_comfy_scaled_fp8_file_is_what_comfyui_loads(scheme, run_cli):
    """The marker, scales and dtypes ComfyUI's legacy loader (and the converter of current
    ComfyUI, which turns scale_weight into weight_scale) expects, in Wan's original layout."""
    path = _artifact("wan", scheme, None, "comfy-legacy")
    fp8 = LINEAR_SCHEMES[scheme].fp8_dtype
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in keys}
    assert "_quantization_metadata" not in meta  # a legacy file: ComfyUI keys on the marker
    assert (
        t["scaled_fp8"].dtype == fp8 and t["scaled_fp8"].numel() == 0
    )  # 2 elements would mean full-precision mm
    layers = sorted(k.removesuffix(".scale_weight") for k in keys if k.endswith(".scale_weight"))
    assert (
        "blocks.0.self_attn.q" in layers and "blocks.1.ffn.2" in layers and "blocks.0.cross_attn.o" in layers
    )
    assert len(layers) == 2 * 10  # q k v o of both attentions and the two FFN Linears, in both blocks
    for layer in layers:
        w, s = t[f"{layer}.weight"], t[f"{layer}.scale_weight"]
        assert w.dtype == fp8 and s.dtype == torch.float32 and s.shape == ()
        assert f"{layer}.bias" in keys and t[f"{layer}.bias"].dtype == torch.float32
        assert float(w.float().abs().max()) == torch.finfo(fp8).max  # the abs-max maps to fp8's max
    for k in keys - {"scaled_fp8"} - {f"{lay}.{x}" for lay in layers for x in ("weight", "scale_weight")}:
        assert t[k].dtype == torch.float32, k  # everything else untouched
    for kept in (
        "patch_embedding.weight",
        "head.head.weight",
        "text_embedding.0.weight",
        "time_projection.1.weight",
    ):
        assert kept in keys and f"{kept.removesuffix('.weight')}.scale_weight" not in keys
    assert "blocks.0.modulation" in keys and "head.modulation" in keys
    # ComfyUI dequantizes weight * scale_weight; so does our convert (fp32)
    out = path.with_name(path.stem + "-plain.safetensors")
    r = run_cli("convert", path, out, "--to", "original", "--dtype", "fp32")
    assert r.code == 0, r.err
    plain = load_file(str(out))
    for layer in layers:
        assert torch.equal(
            plain[f"{layer}.weight"], t[f"{layer}.weight"].float() * t[f"{layer}.scale_weight"]
        )
    assert sorted(plain) == sorted(keys - {"scaled_fp8"} - {f"{lay}.scale_weight" for lay in layers})


def test_policy_keep_and_keep_blocks_are_recorded(work):
    dst = work / "wan-int8-kept"
    r = quantize_linear(
        _source("wan"), dst, "int8", keep=("*.attn2.to_v.weight",), keep_blocks="first:1", progress=False
    )
    rows = {x["name"]: x for x in json.loads(r.report_path.read_text())["layers"]}
    assert r.report_path == work / "wan-int8-kept.layers.json"
    assert rows["blocks.0.attn1.to_q.weight"]["reason"] == "--keep-blocks (block 0)"
    assert rows["blocks.1.attn2.to_v.weight"]["reason"] == "--keep"
    assert rows["blocks.1.attn1.to_q.weight"]["type"] == "int8"
    assert rows["blocks.1.attn1.to_q.weight"]["sqnr_db"] > 35
    assert (
        rows["blocks.1.attn1.to_q.weight"]["bytes_after"]
        < rows["blocks.1.attn1.to_q.weight"]["bytes_before"] / 3
    )
    assert rows["proj_out.weight"]["reason"] == "head"
    assert rows["condition_embedder.time_proj.weight"]["reason"] == "time embedding"
    assert rows["patch_embedding.weight"]["reason"] == "not a Linear weight"
    assert rows["scale_shift_table"]["reason"] == "not a Linear weight"
    assert any("int8" in line for line in r.summary_lines())
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert "blocks.0.attn1.to_q" in qc["ignore"] and "blocks.1.attn2.to_v" in qc["ignore"]
    assert "blocks.1.attn1.to_q" not in qc["ignore"]
    cog = _report(_artifact("cogvideox", "int8"))
    assert cog["transformer_blocks.0.norm1.linear.weight"]["reason"] == "modulation"
    assert cog["transformer_blocks.0.ff.net.2.weight"]["type"] == "int8"
    sana = _report(_artifact("sana", "int8"))
    assert sana["transformer_blocks.0.ff.conv_inverted.weight"]["reason"] == "not a Linear weight"
    assert sana["caption_projection.linear_1.weight"]["reason"] == "text embedding"
    assert sana["transformer_blocks.0.attn2.to_k.weight"]["type"] == "int8"


def test_int4_rows_that_do_not_split_into_groups_are_kept(work):
    """Documented fallback: such a Linear stays in high precision, with the reason recorded."""
    src = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), work)
    with pytest.raises(UsageError, match="do not split into groups of 128"):
        quantize_linear(src, work / "tiny-int4", "int4", progress=False)
    r = quantize_linear(
        _source("wan"), work / "wan-int4-narrow", "int4", keep_blocks="last:1", progress=False
    )
    assert all(x.qtype in ("int4", "F32") for x in r.layers)
    with pytest.raises(Exception, match="not a multiple"):
        quantize_weight(torch.zeros(4, 96), get_linear_scheme("int4"))
    from weightsmith.quantize.linear.policy import LinearPolicy

    spec = get_component("sana", "transformer").quant
    p = LinearPolicy(spec, get_linear_scheme("int4"), ["transformer_blocks.0.attn1.to_q.weight"], [])
    d = p.decide("transformer_blocks.0.attn1.to_q.weight", (2240, 2240))
    assert not d.quantize and "2240 not a multiple of group 128" in d.reason and "int4-g64" in d.reason


def test_bf16_source_dequantizes_back_to_bf16(work, run_cli):
    from weightsmith.io.writers import write_diffusers_component
    from weightsmith.tiny import tiny_state

    state, cfg = tiny_state("wan", "transformer", "2.1-t2v", "diffusers")
    state = {k: v.to(torch.bfloat16) for k, v in state.items()}
    src = work / "wan-bf16"
    specs = [(k, tuple(v.shape), v.dtype) for k, v in sorted(state.items())]
    write_diffusers_component(
        src, specs, iter(sorted(state.items())), {"_class_name": "WanTransformer3DModel", **cfg}
    )
    quantize_linear(src, work / "wan-bf16-fp8", "fp8", progress=False)
    assert run_cli("convert", work / "wan-bf16-fp8", work / "wan-bf16-back", "--to", "diffusers").code == 0
    back = load_file(str(work / "wan-bf16-back" / "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in back.values()} == {torch.bfloat16}
    assert torch.equal(back["proj_out.weight"], state["proj_out.weight"])  # kept: untouched
    w, b = state["blocks.0.attn1.to_q.weight"].float(), back["blocks.0.attn1.to_q.weight"].float()
    assert not torch.equal(w, b) and sqnr_db(w, b) > 25
    # re-quantizing a quantized artifact works from its dequantized weights
    r = quantize_linear(work / "wan-bf16-fp8", work / "wan-bf16-int8", "int8", progress=False)
    assert any(x.qtype == "int8" for x in r.layers)


def test_gguf_converts_back_to_the_weights_its_loader_uses(work, run_cli):
    from weightsmith.load import load_gguf_model
    from weightsmith.quantize.gguf.loader import GGMLLinear
    from weightsmith.quantize.gguf.run import quantize_gguf

    g = work / "wan-Q8_0.gguf"
    quantize_gguf(_source("wan"), g, "gguf:Q8_0", progress=False, report=False)
    assert run_cli("convert", g, work / "wan-q8-plain", "--to", "diffusers", "--dtype", "fp32").code == 0
    plain = load_file(str(work / "wan-q8-plain" / "diffusion_pytorch_model.safetensors"))
    model = load_gguf_model(g)
    n = 0
    for name, mod in model.named_modules():
        if isinstance(mod, GGMLLinear):
            assert torch.equal(plain[f"{name}.weight"], mod.dequantized_weight()), name
            n += 1
    assert n > 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--scheme", "int5"), "unknown scheme 'int5'"),
        (
            ("--scheme", "fp8-e5m2", "--format", "compressed-tensors"),
            "cannot be written as compressed-tensors",
        ),
        (("--scheme", "int4", "--format", "comfy"), "cannot be written as comfy"),
        (("--scheme", "int4", "--activations", "int8"), "does not go with --scheme int4"),
        (("--scheme", "fp8", "--activations", "int8"), "does not go with --scheme fp8"),
        (("--scheme", "int8", "--keep-blocks", "first=1,first=2"), "cannot read --keep-blocks"),
        (("--scheme", "gguf:Q8_0", "--keep-blocks", "first:1"), "apply to int8/fp8/int4/fp4 schemes"),
        (("--scheme", "int8", "--imatrix", "x.dat"), "--imatrix applies to GGUF"),
        (("--scheme", "int8", "--family", "sana"), "is not a sana checkpoint"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(work, run_cli, args, needle):
    dst = work / "bad-out"
    r = run_cli("quantize", _source("wan"), dst, *args)
    assert r.code == 2 and r.err.count("\n") == 1 and needle in r.words, r.err
    assert not dst.exists() and not list(work.glob(".bad-out*"))


def test_bad_input_api():
    with pytest.raises(UsageError, match="compressed-tensors"):
        quantize_linear(_source("sana"), _ROOT[0] / "sana.safetensors", "fp8-tensor", progress=False)
    with pytest.raises(UsageError, match="component folder"):
        quantize_linear(_source("wan"), _ROOT[0] / "x.safetensors", "int8", format="compressed-tensors")
    assert parse_keep_blocks("first:2, last:3").first == 2 and parse_keep_blocks(None).last == 0
    with pytest.raises(UsageError, match="int8 activations"):
        load_quantized(_artifact("wan", "int4"), activations="int8")
    with pytest.raises(UsageError, match="not a compressed-tensors folder"):
        load_quantized(_source("wan"))


@pytest.mark.parametrize("preset", ["W8A16", "W4A16_ASYM", "FP8_DYNAMIC"])
def test_reads_checkpoints_compressed_tensors_itself_writes(work, preset, run_cli):
    """Another tool's file: a bf16 model whose scales and zero points compressed-tensors computed
    (its own int8 range [-128, 127], bf16 scales) and its compressor packed. We read it as its
    decompressor does, and run it."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import CompressedTensorsDequantizer
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme
    from compressed_tensors.quantization.utils import calculate_qparams
    from safetensors.torch import save_file

    model = _model("wan")
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    scheme = preset_name_to_scheme(preset, ["Linear"])
    fmt = infer_module_format(nn.Linear, scheme).value
    comp = BaseCompressor.get_value_from_registry(fmt)
    args = scheme.weights
    out: dict[str, torch.Tensor] = {}
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("blocks.")]
    for k, v in state.items():
        if k.removesuffix(".weight") not in targets or not k.endswith(".weight"):
            out[k] = v
            continue
        view = v.view(v.shape[0], -1, args.group_size) if args.group_size else v.view(v.shape[0], 1, -1)
        scale, zp = calculate_qparams(view.amin(-1), view.amax(-1), args)
        given = {"weight": v, "weight_scale": scale, "weight_zero_point": zp.to(torch.int8)}
        for kk, t in comp.compress(given, scheme).items():
            out[f"{k.removesuffix('weight')}{kk}"] = t.contiguous()
    folder = work / f"foreign-{preset}"
    folder.mkdir()
    qc = QuantizationConfig(config_groups={"group_0": scheme}, format=fmt, quantization_status="compressed")
    ignore = sorted({k.rsplit(".", 1)[0] for k in out if k.endswith(".weight")} - set(targets))
    cfg = {"_class_name": "WanTransformer3DModel", **WIDE["wan"][1]}
    cfg["quantization_config"] = {**qc.model_dump(), "ignore": ignore, "quant_method": "compressed-tensors"}
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(out, str(folder / "diffusion_pytorch_model.safetensors"))
    theirs = CompressedTensorsDequantizer(folder, dtype=torch.float32).validate(
        load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    )
    assert (
        run_cli(
            "convert", folder, work / f"foreign-{preset}-plain", "--to", "diffusers", "--dtype", "fp32"
        ).code
        == 0
    )
    ours = load_file(str(work / f"foreign-{preset}-plain" / "diffusion_pytorch_model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k
    m = load_model(folder, dtype=torch.bfloat16)
    assert type(m.blocks[0].attn1.to_q.weight).__name__ in (
        "Int8Tensor",
        "IntxUnpackedToInt8Tensor",
        "Float8Tensor",
    )
    ref = _run(_model("wan"), "wan")
    got = _run(load_quantized(folder, backend="reference", dtype=torch.float32), "wan")
    assert sqnr_db(ref, got) > 20


def test_same_input_same_bytes(work):
    for scheme, fmt in (("int4-asym", None), ("fp8-e5m2", "comfy")):
        first = _artifact("wan", scheme, None, fmt)
        again = work / f"again-{first.name}"
        quantize_linear(_source("wan"), again, scheme, format=fmt, progress=False, report=False)
        files = (
            [(first, again)]
            if fmt
            else [(first / n, again / n) for n in ("config.json", "diffusion_pytorch_model.safetensors")]
        )
        for a, b in files:
            assert a.read_bytes() == b.read_bytes(), a.name
