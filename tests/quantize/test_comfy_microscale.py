"""ComfyUI's mxfp8 and nvfp4 (reference comfy-quant.md) on a tiny Wan whose FFN width (200) no block
divides, so padding is exercised: the file, decoded by ComfyUI's documented loading rules (written
here from the reference, not from our writer: explicit 128x4 tile indices, high nibble = even
column, E2M1/E4M3/E8M0 tables) and by comfy-kitchen's own QuantizedTensor, equals bit for bit what
`convert DST --to original --dtype fp32` gives; comfy-kitchen quantizes the source to our very bytes;
activation calibration writes input_scale; --sensitivity/--fp-layers pick full-precision layers."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from hostile_inputs import TINY_WAN
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from weightsmith.quantize.linear.run import quantize_linear

FFN = 200
FORMATS = {"mxfp8": (32, torch.float8_e4m3fn, torch.uint8), "nvfp4": (16, torch.uint8, torch.float8_e4m3fn)}
BLOCK_LINEARS = [f"blocks.0.{a}.{x}" for a in ("self_attn", "cross_attn") for x in "qkvo"] + [
    "blocks.0.ffn.0",
    "blocks.0.ffn.2",
]
SHAPES = {n: (256, 256) for n in BLOCK_LINEARS} | {"blocks.0.ffn.0": (FFN, 256), "blocks.0.ffn.2": (256, FFN)}
E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def _roundup(n: int, m: int) -> int:
    return (n + m - 1) // m * m


@pytest.fixture(scope="module")
def wan200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from weightsmith.families import get_component

    cls = get_component("wan", "transformer").model_class("2.1-t2v")
    torch.manual_seed(1)
    model = cls(**{**TINY_WAN, "ffn_dim": FFN})
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("wan200") / "transformer"
    model.save_pretrained(str(folder))
    return folder


@cache
def _quantized(src: Path, scheme: str, absmax: tuple[tuple[str, float], ...] | None = None, **kw) -> Path:
    dst = src.parent / f"wan-{scheme}-{len(absmax or ())}-{len(kw)}.safetensors"
    amax = dict(absmax) if absmax is not None else None
    quantize_linear(src, dst, scheme, progress=False, device="cpu", activation_absmax=amax, **kw)
    return dst


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def _confs(t: dict[str, torch.Tensor]) -> dict[str, dict]:
    return {
        k.removesuffix(".comfy_quant"): json.loads(bytes(v.tolist()).decode())
        for k, v in t.items()
        if k.endswith(".comfy_quant")
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    assert t.dtype == torch.float32
    return t.contiguous().view(torch.int32)


def _plain(path: Path, run_cli) -> dict[str, torch.Tensor]:
    out = path.with_name(path.stem + "-plain.safetensors")
    if not out.exists():
        r = run_cli("convert", path, out, "--to", "original", "--dtype", "fp32")
        assert r.code == 0, r.err
    return load_file(str(out))


# --- ComfyUI's loading rules, from the reference ---------------------------------------------


def _unswizzle(stored: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Scale (r, c) of a 128x4-tiled matrix lies at flat index
    ((r//128 * tiles_per_row + c//4) * 32 + r%32) * 16 + (r%128)//32 * 4 + c%4 (cuBLAS's layout)."""
    tiles_per_row = _roundup(cols, 4) // 4
    assert stored.shape == (_roundup(rows, 128), _roundup(cols, 4))
    r = torch.arange(rows).unsqueeze(1)
    c = torch.arange(cols).unsqueeze(0)
    idx = ((r // 128 * tiles_per_row + c // 4) * 32 + r % 32) * 16 + (r % 128) // 32 * 4 + c % 4
    return stored.reshape(-1)[idx]


def _rules_dequantize(
    fmt: str, t: dict[str, torch.Tensor], layer: str, shape: tuple[int, int]
) -> torch.Tensor:
    w, s = t[f"{layer}.weight"], t[f"{layer}.weight_scale"]
    if fmt == "nvfp4":
        rows, cols = w.shape[0], w.shape[1] * 2
        u = w.to(torch.int64)
        codes = torch.stack((u >> 4, u & 15), dim=-1).reshape(rows, cols)  # even column = high nibble
        lut = torch.tensor(E2M1 + [-v for v in E2M1], dtype=torch.float32)
        values = lut[codes]
        block = _unswizzle(s.view(torch.uint8), rows, cols // 16).view(torch.float8_e4m3fn).to(torch.float32)
        total = t[f"{layer}.weight_scale_2"].to(torch.float32) * block
        out = (values.reshape(rows, -1, 16) * total.unsqueeze(-1)).reshape(rows, cols)
    else:
        rows, cols = w.shape
        exps = _unswizzle(s.view(torch.uint8), rows, cols // 32).to(torch.int32)
        scale = torch.where(exps == 0, 0.0, torch.ldexp(torch.ones(exps.shape), exps - 127))
        out = (w.to(torch.float32).reshape(rows, -1, 32) * scale.unsqueeze(-1)).reshape(rows, cols)
    return out[: shape[0], : shape[1]]


def _kitchen_dequantize(
    fmt: str, t: dict[str, torch.Tensor], layer: str, shape: tuple[int, int]
) -> torch.Tensor:
    """What ComfyUI's loader builds (comfy-kitchen's QuantizedTensor, CPU eager backend), in float32."""
    from comfy_kitchen.tensor import QuantizedTensor, TensorCoreMXFP8Layout, TensorCoreNVFP4Layout

    w, s = t[f"{layer}.weight"], t[f"{layer}.weight_scale"]
    if fmt == "nvfp4":
        params = TensorCoreNVFP4Layout.Params(
            scale=t[f"{layer}.weight_scale_2"],
            orig_dtype=torch.float32,
            orig_shape=shape,
            block_scale=s.view(torch.float8_e4m3fn),
        )
        return QuantizedTensor(w, "TensorCoreNVFP4Layout", params).dequantize()
    params = TensorCoreMXFP8Layout.Params(
        scale=s.view(torch.float8_e8m0fnu), orig_dtype=torch.float32, orig_shape=shape
    )
    return QuantizedTensor(w, "TensorCoreMXFP8Layout", params).dequantize()


# --- the tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_file_dequantizes_by_comfyui_rules_to_our_convert(fmt, wan200, run_cli, one_thread):
    block, wdtype, sdtype = FORMATS[fmt]
    path = _quantized(wan200, fmt)
    t, meta = _tensors(path)
    confs = _confs(t)
    assert sorted(confs) == sorted(BLOCK_LINEARS)
    assert all(c == {"format": fmt, "full_precision_matrix_mult": True} for c in confs.values())
    plain = _plain(path, run_cli)
    hidden = (".comfy_quant", ".weight_scale", ".weight_scale_2")
    assert sorted(plain) == sorted(k for k in t if not k.endswith(hidden))
    for layer, shape in SHAPES.items():
        w, s = t[f"{layer}.weight"], t[f"{layer}.weight_scale"]
        rows, cols = _roundup(shape[0], block), _roundup(shape[1], block)
        assert w.dtype == wdtype and w.shape == ((rows, cols // 2) if fmt == "nvfp4" else (rows, cols)), layer
        assert s.dtype == sdtype and s.shape == (_roundup(rows, 128), _roundup(cols // block, 4)), layer
        if fmt == "nvfp4":
            g = t[f"{layer}.weight_scale_2"]
            assert g.dtype == torch.float32 and g.shape == ()
        ours = plain[f"{layer}.weight"]
        assert ours.shape == shape
        rules = _rules_dequantize(fmt, t, layer, shape)
        assert torch.equal(_bits(rules), _bits(ours)), layer
        assert torch.equal(_bits(_kitchen_dequantize(fmt, t, layer, shape)), _bits(ours)), layer
    # padding is zeros: the padded rows/columns decode to 0 by the rules
    w = t["blocks.0.ffn.0.weight"]
    assert not bool(w.view(torch.uint8)[FFN:].any())
    assert json.loads(meta["weightsmith.shapes"]) == {
        "blocks.0.ffn.0.weight": [FFN, 256],
        "blocks.0.ffn.2.weight": [256, FFN],
    }
    # nothing but the Linear layers above is quantized: every other tensor is float32 as written
    for k, v in t.items():
        if k.rsplit(".", 1)[0] not in confs:
            assert v.dtype == torch.float32, k
            assert torch.equal(_bits(plain[k]), _bits(v)), k
    rows = {r["name"]: r for r in json.loads(Path(f"{path}.layers.json").read_text())["layers"]}
    assert rows["patch_embedding.weight"]["reason"] == "not a Linear weight"
    assert rows["head.head.weight"]["reason"] == "head" and "head.head.comfy_quant" not in t
    assert rows["blocks.0.ffn.2.weight"]["type"] == fmt
    assert rows["blocks.0.ffn.2.weight"]["matmul"].startswith("full precision matmul")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_comfy_kitchen_quantizes_the_source_to_our_bytes(fmt, wan200, one_thread):
    from comfy_kitchen.tensor import TensorCoreMXFP8Layout, TensorCoreNVFP4Layout

    src = load_file(str(wan200 / "diffusion_pytorch_model.safetensors"))
    t, _ = _tensors(_quantized(wan200, fmt))
    for diffusers, layer in (
        ("blocks.0.attn1.to_q", "blocks.0.self_attn.q"),
        ("blocks.0.ffn.net.2", "blocks.0.ffn.2"),
    ):
        w = src[f"{diffusers}.weight"]
        if fmt == "nvfp4":
            q, params = TensorCoreNVFP4Layout.quantize(w)
            assert torch.equal(params.scale, t[f"{layer}.weight_scale_2"])
            block = params.block_scale
        else:
            q, params = TensorCoreMXFP8Layout.quantize(w)
            block = params.scale
        assert torch.equal(q.view(torch.uint8), t[f"{layer}.weight"].view(torch.uint8)), layer
        assert torch.equal(block.view(torch.uint8), t[f"{layer}.weight_scale"].view(torch.uint8)), layer


def test_calibration_writes_input_scales_and_drops_full_precision(wan200, run_cli, one_thread):
    absmax = (("blocks.0.attn1.to_q", 3.5), ("blocks.0.ffn.net.0.proj", 12.0), ("blocks.0.attn2.to_k", 0.0))
    for scheme, fmt, divisor in (
        ("fp8", "float8_e4m3fn", 448.0),
        ("fp8-e5m2", "float8_e5m2", 57344.0),
        ("nvfp4", "nvfp4", 2688.0),
        ("int8-tensor", "int8_tensorwise", None),
        ("mxfp8", "mxfp8", None),
    ):
        path = _quantized(wan200, scheme, absmax)
        t, _ = _tensors(path)
        confs = _confs(t)
        for layer, amax in (("blocks.0.self_attn.q", 3.5), ("blocks.0.ffn.0", 12.0)):
            if divisor is None:  # dynamic activations in ComfyUI; written weight-only
                assert confs[layer] == {"format": fmt, "full_precision_matrix_mult": True}, scheme
                assert f"{layer}.input_scale" not in t
                continue
            assert confs[layer] == {"format": fmt}, scheme
            s = t[f"{layer}.input_scale"]
            assert s.dtype == torch.float32 and s.shape == ()
            assert torch.equal(s, torch.tensor(amax / divisor, dtype=torch.float32)), (scheme, layer)
        # no range measured (abs-max 0, or not in the mapping): full precision, no input_scale
        for layer in ("blocks.0.cross_attn.k", "blocks.0.self_attn.o"):
            assert confs[layer]["full_precision_matrix_mult"] is True and f"{layer}.input_scale" not in t
        assert "input_scale" not in " ".join(_plain(path, run_cli))  # the reader hides them


def test_sensitivity_ranking_picks_full_precision_layers(wan200, tmp_path, run_cli, one_thread):
    ranking = {
        "schema": "weightsmith.sensitivity/1",
        "layers": [
            {"rank": 1, "module": "blocks.0.ffn.net.2", "output_sqnr_db": 20.0},
            {"rank": 2, "module": "blocks.0.attn1.to_q", "output_sqnr_db": 25.0},
            {"rank": 3, "module": "blocks.0.attn1.to_k", "output_sqnr_db": 30.0},
        ],
    }
    sens = tmp_path / "sensitivity.json"
    sens.write_text(json.dumps(ranking))
    absmax = tuple((m, 2.0) for m in ("blocks.0.ffn.net.2", "blocks.0.attn1.to_q", "blocks.0.attn1.to_k"))
    path = _quantized(wan200, "fp8-tensor", absmax, sensitivity=str(sens), fp_layers=2)
    t, _ = _tensors(path)
    confs = _confs(t)
    for layer in ("blocks.0.ffn.2", "blocks.0.self_attn.q"):
        assert confs[layer] == {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}
    assert confs["blocks.0.self_attn.k"] == {"format": "float8_e4m3fn"}
    rows = {r["name"]: r for r in json.loads(Path(f"{path}.layers.json").read_text())["layers"]}
    assert (
        rows["blocks.0.ffn.2.weight"]["matmul"] == "full precision matmul (--fp-layers: sensitivity rank 1)"
    )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**ranking, "layers": [{"module": "blocks.9.nope"}]}))
    for args, needle in (
        (("--fp-layers", "2"), "--sensitivity and --fp-layers go together"),
        (("--sensitivity", bad, "--fp-layers", "1"), "which is not a Linear layer of this model"),
        (("--sensitivity", sens, "--fp-layers", "1", "--format", "compressed-tensors"), "has none"),
    ):
        dst = tmp_path / ("x" if "compressed-tensors" in args else "x.safetensors")
        r = run_cli("quantize", wan200, dst, "--scheme", "fp8", *args)
        assert r.code == 2 and r.err.count("\n") == 1 and needle in r.words, r.err
        assert not dst.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ("--scheme", "mxfp8", "--format", "compressed-tensors"),
            "mxfp8 is written in ComfyUI's format only",
        ),
        (("--scheme", "mxfp4", "--format", "comfy"), "ComfyUI takes nvfp4"),
    ],
)
def test_formats_without_that_scheme_are_refused(args, needle, wan200, tmp_path, run_cli):
    dst = tmp_path / ("out" if "compressed-tensors" in args else "out.safetensors")
    r = run_cli("quantize", wan200, dst, *args)
    assert r.code == 2 and r.err.count("\n") == 1 and needle in r.words, r.err
    assert not dst.exists()


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("scale_2", "weight_scale_2 is missing or not one float"),
        ("scale_shape", "block scales; 256x256 needs 256x16 (padded, 128x4-swizzled)"),
    ],
)
def test_malformed_nvfp4_layers_are_refused(damage, needle, wan200, tmp_path, run_cli, one_thread):
    t, meta = _tensors(_quantized(wan200, "nvfp4"))
    if damage == "scale_2":
        del t["blocks.0.self_attn.q.weight_scale_2"]
    else:
        t["blocks.0.self_attn.q.weight_scale"] = t["blocks.0.self_attn.q.weight_scale"][:128].contiguous()
    bad = tmp_path / "bad.safetensors"
    save_file(t, str(bad), metadata=meta)
    r = run_cli("convert", bad, tmp_path / "plain.safetensors", "--to", "original", "--dtype", "fp32")
    assert r.code == 2 and r.err.count("\n") == 1 and needle in r.words, r.err


def test_header_metadata_nvfp4_without_shape_record_reads_rows_from_the_bias(
    wan200, tmp_path, run_cli, one_thread
):
    """A foreign file: `_quantization_metadata` instead of per-layer tensors, no weightsmith record
    of the padded shapes; the rows come from the bias, as ComfyUI's model would give them (columns
    are taken as stored: no released Wan width needs padding)."""
    path = _quantized(wan200, "nvfp4")
    t, meta = _tensors(path)
    layers = {
        k.removesuffix(".comfy_quant"): json.loads(bytes(t.pop(k).tolist()))
        for k in list(t)
        if k.endswith(".comfy_quant")
    }
    meta = {k: v for k, v in meta.items() if k != "weightsmith.shapes"}
    meta["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    other = tmp_path / "foreign.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in t.items()}, str(other), metadata=meta)
    ours, theirs = _plain(path, run_cli), _plain(other, run_cli)
    assert theirs["blocks.0.ffn.0.weight"].shape == (FFN, 256)
    assert torch.equal(_bits(theirs["blocks.0.ffn.0.weight"]), _bits(ours["blocks.0.ffn.0.weight"]))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_load_runs_the_stored_numbers(fmt, wan200, run_cli, one_thread):
    from weightsmith.load import load_quantized
    from weightsmith.quantize.linear.runtime import QuantLinear

    path = _quantized(wan200, fmt)
    plain = _plain(path, run_cli)
    model = load_quantized(path, backend="auto")
    ff = model.blocks[0].ffn.net[0].proj
    assert isinstance(ff, QuantLinear) and ff.scheme.name == fmt
    assert torch.equal(_bits(ff.dequantized_weight()), _bits(plain["blocks.0.ffn.0.weight"]))
    x = torch.randn(2, 256)
    want = torch.nn.functional.linear(x, plain["blocks.0.ffn.0.weight"], plain["blocks.0.ffn.0.bias"])
    assert torch.equal(ff(x), want)


@pytest.mark.parametrize("family", ["sana"])
def test_families_without_a_native_comfyui_model_are_refused(family, tmp_path, run_cli):
    from weightsmith.families import get_component
    from weightsmith.tiny import Fixture, save_fixture

    variant = get_component(family, "transformer").variants[0]
    src = save_fixture(Fixture(family, "transformer", variant, "diffusers", "diffusers-folder"), tmp_path)
    r = run_cli("quantize", src, tmp_path / "x.safetensors", "--scheme", "nvfp4")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert (
        "writes the ComfyUI layout of cogvideox transformer, wan transformer" in r.words
        and "no native Sana model" in r.words
    )
    assert not (tmp_path / "x.safetensors").exists()


def test_demo_matrix_shows_microscaled_schemes_as_comfyui_files_where_comfyui_loads_them():
    from weightsmith.verify.matrix import _artifact_name, available_schemes

    assert {"mxfp8", "nvfp4"} <= set(available_schemes())
    assert _artifact_name("wan", "nvfp4") == "wan-nvfp4-comfy.safetensors"
    assert _artifact_name("wan", "mxfp8") == "wan-mxfp8-comfy.safetensors"
    assert _artifact_name("cogvideox", "nvfp4") == "cogvideox-nvfp4-comfy.safetensors"
    assert _artifact_name("sana", "nvfp4") == "sana-nvfp4"  # compressed-tensors elsewhere
    assert _artifact_name("wan", "int8") == "wan-int8"
