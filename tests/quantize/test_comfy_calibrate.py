"""``quantize --format comfy --calibrate`` end to end on the tiny Wan pipeline: the CLI writes
``input_scale = absmax / format max`` (nvfp4: / 2688) for exactly the calibrated Linear layers (the
calibration recomputed here on the same generations), none of them ``full_precision_matrix_mult``;
the reference runtime quantizes those layers' inputs with the static scale as ComfyUI does (equal
to comfy-kitchen's quantize-dequantize bit for bit), and ``verify`` scores the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from weightsmith.kernels.microscale_comfy import fake_quantize_comfy_input
from weightsmith.verify.calibrate import calibrate_activations
from weightsmith.verify.settings import GenerationSettings
from weightsmith.verify.tiny import TINY_SIZE, TINY_VARIANTS, save_tiny_pipeline

DIVISOR = {"fp8": 448.0, "nvfp4": 2688.0}
H, W, F = TINY_SIZE["wan"]
GEN = ["--seeds", "0", "--steps", "2", "--height", str(H), "--width", str(W), "--frames", str(F)]
GEN += ["--text-len", "8"]


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("cal") / "pipe", "wan", TINY_VARIANTS["wan"][0])


def _settings() -> GenerationSettings:
    return GenerationSettings(height=H, width=W, frames=F, steps=2, text_len=8, seeds=(0,), device="cpu")


def _confs_and_scales(path: Path) -> tuple[dict[str, dict], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        confs = {
            k.removesuffix(".comfy_quant"): json.loads(bytes(f.get_tensor(k).tolist()))
            for k in keys
            if k.endswith(".comfy_quant")
        }
        scales = {k.removesuffix(".input_scale"): f.get_tensor(k) for k in keys if k.endswith(".input_scale")}
    return confs, scales


@pytest.mark.parametrize("scheme", ["fp8", "nvfp4"])
def test_cli_calibrate_writes_input_scales_the_runtime_applies_and_verify_scores(
    scheme, pipe, tmp_path, run_cli, one_thread
):
    from weightsmith.load import load_quantized
    from weightsmith.quantize.linear.runtime import QuantLinear
    from weightsmith.verify import VerifyOptions, verify

    dst = tmp_path / f"wan-{scheme}.safetensors"
    r = run_cli(
        "quantize",
        str(pipe / "transformer"),
        str(dst),
        "--scheme",
        scheme,
        "--format",
        "comfy",
        "--calibrate",
        *GEN,
    )
    assert r.code == 0, r.err
    absmax = calibrate_activations(str(pipe / "transformer"), _settings(), progress=False).absmax
    confs, scales = _confs_and_scales(dst)
    assert scales and len(scales) == sum(1 for c in confs.values() if "full_precision_matrix_mult" not in c)

    model = load_quantized(dst, backend="auto")
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    assert len(quantized) == len(confs)
    calibrated = {n for n in quantized if absmax.get(n, 0.0) > 0}
    assert calibrated and len(calibrated) == len(scales)
    for n, m in quantized.items():
        if n in calibrated:
            want = torch.tensor(absmax[n] / DIVISOR[scheme], dtype=torch.float32)
            assert m.input_scale is not None and torch.equal(m.input_scale, want), n
        else:
            assert m.input_scale is None, n
    assert sorted(float(s) for s in scales.values()) == sorted(
        float(quantized[n].input_scale) for n in calibrated
    )

    # the runtime quantizes a calibrated layer's inputs with its static scale (values beyond clip)
    name = next(iter(sorted(calibrated)))
    lin = quantized[name]
    x = torch.randn(3, lin.in_features) * absmax[name]
    x[0, 0] = 4 * absmax[name]
    kind = "nvfp4" if scheme == "nvfp4" else torch.float8_e4m3fn
    xq = fake_quantize_comfy_input(x, lin.input_scale, kind)
    want = torch.nn.functional.linear(xq, lin.dequantized_weight(), lin.bias)
    assert torch.equal(lin(x), want)
    assert not torch.equal(lin(x), torch.nn.functional.linear(x, lin.dequantized_weight(), lin.bias))
    # weight-only on request: the static scale is dropped
    plain = load_quantized(dst, backend="auto", activations="none")
    assert all(m.input_scale is None for m in plain.modules() if isinstance(m, QuantLinear))

    res = verify(
        VerifyOptions(
            str(pipe),
            [str(dst)],
            GenerationSettings(height=H, width=W, frames=F, steps=2, text_len=8, seeds=(0,)),
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    )
    sqnr = res.candidates[0].worst["latent_sqnr"]
    assert 5.0 < sqnr < 80.0, sqnr  # scored, and not silently the float model


@pytest.mark.parametrize("kind", ["nvfp4", torch.float8_e4m3fn, torch.float8_e5m2])
def test_static_input_quantization_equals_comfy_kitchen(kind):
    ck = pytest.importorskip("comfy_kitchen")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 40, generator=g) * 2  # 40 features: nvfp4 pads to 48
    x[0, 0, 5] = 50.0  # beyond the calibrated range: clips
    x[1, 2, :16] = 0.0  # an empty block
    if kind == "nvfp4":
        s = torch.tensor(4.0 / 2688, dtype=torch.float32)
        q, blocks = ck.quantize_nvfp4(x.reshape(-1, 40), s, pad_16x=True)
        want = ck.dequantize_nvfp4(q, s, blocks, torch.float32)[:6, :40].reshape(x.shape)
    else:
        s = torch.tensor(4.0 / torch.finfo(kind).max, dtype=torch.float32)
        want = ck.dequantize_per_tensor_fp8(ck.quantize_per_tensor_fp8(x, s, kind), s, torch.float32)
    got = fake_quantize_comfy_input(x, s, kind)
    assert got.shape == x.shape and torch.equal(got, want)


@pytest.fixture(scope="module")
def nvfp4_file(pipe: Path) -> Path:
    from weightsmith.quantize.linear.run import quantize_linear

    dst = pipe.parent / "wan-nvfp4-comfy.safetensors"
    absmax = {"blocks.0.attn1.to_q": 3.0, "blocks.0.ffn.net.0.proj": 5.0}
    quantize_linear(
        pipe / "transformer",
        dst,
        "nvfp4",
        format="comfy",
        device="cpu",
        progress=False,
        activation_absmax=absmax,
    )
    return dst


def test_comfy_nvfp4_goes_to_torchao_only_where_its_matmul_runs(monkeypatch):
    from weightsmith.kernels.linear import get_linear_scheme
    from weightsmith.quantize.linear.runtime import torchao_unsupported

    nv, mx = get_linear_scheme("nvfp4"), get_linear_scheme("mxfp8")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    cap = [(10, 0)]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_a, **_k: cap[0])
    assert torchao_unsupported(nv, None, cuda, torch.bfloat16, (64, 64), "comfy") is None
    assert "multiples of 16" in torchao_unsupported(nv, None, cuda, torch.bfloat16, (40, 64), "comfy")
    assert "CUDA GPU" in torchao_unsupported(nv, None, cpu, torch.bfloat16, (64, 64), "comfy")
    assert "reference path" in torchao_unsupported(mx, None, cuda, torch.bfloat16, (64, 64), "comfy")
    cap[0] = (9, 0)
    assert "this GPU is 9.0" in torchao_unsupported(nv, None, cuda, torch.bfloat16, (64, 64), "comfy")


def test_comfy_nvfp4_rowmajor_form_dequantizes_to_our_weight_bit_for_bit(nvfp4_file, one_thread):
    """The padded, even-high, swizzled ComfyUI storage put in compressed-tensors' row-major form
    (even column low, scales unswizzled): the same codes and scales, and torchao's NVFP4Tensor
    built from it dequantizes to our weight bit for bit (weight_scale_2 * scale, both sides)."""
    from weightsmith.kernels.microscale import e2m1_decode
    from weightsmith.kernels.microscale_comfy import comfy_nvfp4_rowmajor
    from weightsmith.kernels.microscale_layout import unpack_nibbles
    from weightsmith.load import load_quantized
    from weightsmith.quantize.linear.runtime import QuantLinear
    from weightsmith.quantize.linear.runtime_fp4 import nvfp4_torchao_weight

    pytest.importorskip("torchao")
    model = load_quantized(nvfp4_file, backend="reference")
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert layers
    for lin in layers:
        qw = lin.quantized_weight()
        assert qw.layout == "comfy"
        rows, cols = qw.shape
        data, scales = comfy_nvfp4_rowmajor(qw.data, qw.scale, qw.shape)
        assert data.shape == (rows, cols // 2) and scales.shape == (rows, cols // 16)
        assert scales.dtype == torch.float8_e4m3fn
        codes = unpack_nibbles(data, even_high=False)
        assert torch.equal(codes, qw.values())
        # ct-form dequantization with ComfyUI's scale order equals the comfy one bit for bit
        g = qw.global_scale.float().reshape(())
        w = (e2m1_decode(codes).reshape(rows, -1, 16) * (g * scales.float()).unsqueeze(-1)).reshape(
            rows, cols
        )
        ref = lin.dequantized_weight()
        assert torch.equal(w.view(torch.int32), ref.view(torch.int32))
        t = nvfp4_torchao_weight(qw, torch.float32)
        assert torch.equal(t.dequantize(torch.float32).view(torch.int32), ref.view(torch.int32))
        if qw.input_scale is not None:  # ComfyUI's input_scale is torchao's activation scale
            assert torch.equal(t.act_per_tensor_scale, qw.input_scale.float().reshape(()))
            assert t.act_quant_kwargs is not None
        else:
            assert t.act_per_tensor_scale is None and t.act_quant_kwargs is None
    assert any(m.input_scale is not None for m in layers)


def test_loader_wires_torchao_for_comfy_nvfp4_where_selected(nvfp4_file, monkeypatch, one_thread):
    from torch import nn
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

    import weightsmith.quantize.linear.runtime as runtime
    from weightsmith.load import load_quantized

    ref = load_quantized(nvfp4_file, backend="reference", activations="none").blocks[0].ffn.net[2]
    monkeypatch.setattr(runtime, "fp4_torchao_unsupported", lambda *a, **k: None)
    lin = load_quantized(nvfp4_file, backend="auto", activations="none").blocks[0].ffn.net[2]
    assert type(lin) is nn.Linear and isinstance(lin.weight, NVFP4Tensor)
    x = torch.randn(3, ref.in_features, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(lin(x), ref(x), rtol=1e-5, atol=1e-6)
    static = load_quantized(nvfp4_file, backend="auto").blocks[0].attn1.to_q.weight
    assert isinstance(static, NVFP4Tensor) and static.act_per_tensor_scale is not None


@pytest.mark.parametrize("bad", [torch.tensor(-1.0), torch.tensor(float("nan")), torch.ones(2)])
def test_a_broken_input_scale_is_refused(bad, nvfp4_file, tmp_path, run_cli):
    from safetensors.torch import save_file

    with safe_open(str(nvfp4_file), "pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    key = next(k for k in t if k.endswith(".input_scale"))
    t[key] = bad
    damaged = tmp_path / "damaged.safetensors"
    save_file(t, str(damaged), metadata=meta)
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", str(damaged), str(out), "--to", "original", "--dtype", "fp32")
    assert r.code == 2 and "not one positive finite float" in r.words, r.err
    assert not out.exists()
