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
