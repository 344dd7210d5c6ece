"""Activation calibration (``quantize --calibrate``) and nvfp4 W4A4 folders (``--activations nvfp4``)
on the tiny Sana, Wan and CogVideoX pipelines: the calibration equals a hook of our own on the same
generations; compressed-tensors parses the config as its NVFP4 preset, its compressor reads every
layer's tensors (``input_global_scale`` included, by its own global-scale rule); the reference
runtime fake-quantizes activations exactly as compressed-tensors does; torchao is picked only where
its NVFP4 matmul runs; bad input ends in one line, exit 2, no output."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from weightsmith.errors import InputError, UsageError
from weightsmith.kernels import microscale as ms
from weightsmith.kernels.linear import get_linear_scheme
from weightsmith.load import load_quantized
from weightsmith.quantize.linear.run import quantize_linear
from weightsmith.quantize.linear.runtime import QuantLinear
from weightsmith.quantize.linear.runtime_fp4 import fp4_torchao_unsupported, nvfp4_torchao_weight
from weightsmith.verify.calibrate import calibrate_activations
from weightsmith.verify.settings import GenerationSettings
from weightsmith.verify.tiny import TINY_SIZE, TINY_VARIANTS, save_tiny_pipeline

FAMILIES = ("sana", "wan", "cogvideox")
_ROOT: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def _root(tmp_path_factory):
    _ROOT[:] = [tmp_path_factory.mktemp("w4a4")]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    for f in (_pipe, _calibration, _w4a4):
        f.cache_clear()


def _settings(family: str, seeds: tuple[int, ...] = (0, 1)) -> GenerationSettings:
    h, w, f = TINY_SIZE[family]
    return GenerationSettings(height=h, width=w, frames=f, steps=2, text_len=8, seeds=seeds, device="cpu")


def _gen_args(family: str) -> list[str]:
    h, w, f = TINY_SIZE[family]
    return ["--steps", "2", "--height", str(h), "--width", str(w), "--frames", str(f), "--text-len", "8"]


@cache
def _pipe(family: str) -> Path:
    return save_tiny_pipeline(_ROOT[0] / f"{family}-pipe", family, TINY_VARIANTS[family][0])


@cache
def _calibration(family: str):
    return calibrate_activations(str(_pipe(family) / "transformer"), _settings(family), progress=False)


@cache
def _w4a4(family: str) -> Path:
    dst = _ROOT[0] / f"{family}-w4a4"
    cal = _calibration(family)
    quantize_linear(
        _pipe(family) / "transformer",
        dst,
        "nvfp4",
        activations="nvfp4",
        activation_absmax=cal.absmax,
        progress=False,
        device="cpu",
    )
    return dst


def _direct_absmax(family: str) -> dict[str, float]:
    """Max |input| per Linear seen by forward hooks of our own on the same reference generations."""
    from weightsmith.verify.models import resolve_baseline
    from weightsmith.verify.runner import Runner, prepare

    base = resolve_baseline(str(_pipe(family) / "transformer"))
    sched, settings, device, items = prepare(base, _settings(family))
    runner = Runner(base, sched, settings, device)
    tr = runner.baseline_module("transformer")
    seen: dict[str, float] = {}

    def hook(name):
        def fn(_m, args, _out):
            seen[name] = max(seen.get(name, 0.0), float(args[0].abs().max()))

        return fn

    hs = [m.register_forward_hook(hook(n)) for n, m in tr.named_modules() if isinstance(m, nn.Linear)]
    try:
        runner.run({"transformer": tr}, items, _Tick(), decode=False)
    finally:
        for h in hs:
            h.remove()
    return seen


class _Tick:
    def update(self, n: int = 1) -> None:
        pass


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_equals_a_direct_hook(family):
    cal = _calibration(family)
    direct = _direct_absmax(family)
    assert cal.absmax == direct  # same names (Diffusers modules), same floats
    assert cal.items == 2 and all(v > 0 for v in cal.absmax.values())
    first = "transformer_blocks.0.attn1.to_q" if family != "wan" else "blocks.0.attn1.to_q"
    assert first in cal.absmax
    lines = cal.summary_lines()
    assert f"{len(cal.absmax)} Linear layers from 2 generation(s)" in lines[0]


def _stored(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_w4a4_folder_is_compressed_tensors_nvfp4(family):
    """The config is compressed-tensors' NVFP4 preset; per layer our tensors are its compressor's
    plus the input_global_scale it registers for the scheme, its decompressor reads our weights,
    and its global-scale rule on the calibrated absmax gives our input_global_scale bit for bit."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.lifecycle.initialize import initialize_module_for_quantization
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme
    from compressed_tensors.quantization.utils.helpers import generate_gparam

    folder = _w4a4(family)
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    assert QuantizationConfig.model_validate(qc).format == "nvfp4-pack-quantized"
    ours = QuantizationScheme.model_validate(qc["config_groups"]["group_0"])
    preset = QuantizationScheme.model_validate(
        preset_name_to_scheme("NVFP4", ["Linear"]).model_dump(mode="json")
    )
    assert ours.weights == preset.weights and ours.input_activations == preset.input_activations
    # The compressor's own tensors, plus the parameter compressed-tensors registers on the module
    # for static-global, locally dynamic activations: input_global_scale, float32 (1,).
    names = set(NVFP4PackedCompressor.compression_param_names(ours))
    probe = nn.Linear(32, 16)
    initialize_module_for_quantization(probe, ours)
    registered = dict(probe.named_parameters())["input_global_scale"]
    assert registered.dtype == torch.float32 and registered.shape == (1,)
    stored, absmax = _stored(folder), _calibration(family).absmax
    modules = sorted(k.removesuffix(".weight_packed") for k in stored if k.endswith(".weight_packed"))
    assert modules
    for m in modules:
        local = {k.removeprefix(m + "."): v for k, v in stored.items() if k.startswith(m + ".")}
        assert set(local) - {"bias"} == names | {"input_global_scale"}, m
        igs = local["input_global_scale"]
        assert igs.dtype == torch.float32 and igs.shape == (1,)
        a = torch.tensor(absmax[m])
        assert torch.equal(igs, generate_gparam(-a, a)), m
        back = NVFP4PackedCompressor.decompress(local, ours)["weight"]
        assert torch.isfinite(back).all() and back.shape == (
            local["weight_packed"].shape[0],
            2 * local["weight_packed"].shape[1],
        )


def test_fake_quantized_activations_are_compressed_tensors(one_thread):
    """Our activation QDQ is compressed-tensors' forward_quantize bit for bit (float32), and the
    reference runtime of a W4A4 folder applies it with the stored input_global_scale."""
    from compressed_tensors.quantization import QuantizationStatus
    from compressed_tensors.quantization.lifecycle.forward import forward_quantize
    from compressed_tensors.quantization.quant_scheme import preset_name_to_scheme

    args = preset_name_to_scheme("NVFP4", ["Linear"]).input_activations
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 64, generator=g) * 4
    x[0, 0, :16] = 0  # an all-zero block: compressed-tensors' eps scale
    x[1, 1, 3] = 1e4  # beyond the calibrated range: clipped the same way
    for amax in (1.0, 7.5, 300.0):
        lin = nn.Linear(64, 8)
        lin.quantization_status = QuantizationStatus.COMPRESSED
        lin.input_global_scale = nn.Parameter(
            ms.nvfp4_global_scale(torch.tensor(amax)).reshape(1), requires_grad=False
        )
        ref = forward_quantize(lin, x, "input", args)
        assert torch.equal(
            ref.view(torch.int32), ms.fake_quantize_nvfp4(x, lin.input_global_scale).view(torch.int32)
        )

    model = load_quantized(_w4a4("sana"))
    q = model.transformer_blocks[0].attn1.to_q
    assert isinstance(q, QuantLinear) and q.activations == "nvfp4" and q.input_global_scale is not None
    xin = torch.randn(3, q.in_features, generator=g)
    expect = torch.nn.functional.linear(
        ms.fake_quantize_nvfp4(xin, q.input_global_scale), q.dequantized_weight(), q.bias
    )
    assert torch.equal(q(xin), expect)
    weight_only = load_quantized(_w4a4("sana"), activations="none").transformer_blocks[0].attn1.to_q
    assert weight_only.activations is None and not torch.equal(weight_only(xin), expect)


def test_torchao_only_where_its_nvfp4_matmul_runs():
    nv, mx = get_linear_scheme("nvfp4"), get_linear_scheme("mxfp4")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert "reference path" in fp4_torchao_unsupported(mx, cuda, (64, 64), capability=(10, 0))
    assert "CUDA GPU" in fp4_torchao_unsupported(nv, cpu, (64, 64))
    assert "this GPU is 9.0" in fp4_torchao_unsupported(nv, cuda, (64, 64), capability=(9, 0))
    assert fp4_torchao_unsupported(nv, cuda, (64, 64), capability=(10, 0)) is None
    assert fp4_torchao_unsupported(nv, cuda, (64, 64), capability=(12, 0)) is None
    assert "multiples of 16" in fp4_torchao_unsupported(nv, cuda, (40, 64), capability=(10, 0))
    assert "bfloat16 or float32" in fp4_torchao_unsupported(nv, cuda, (64, 64), torch.float16, (10, 0))
    # On this CPU the loader keeps the reference layer, whatever backend="auto" finds.
    model = load_quantized(_w4a4("sana"), backend="auto")
    assert isinstance(model.transformer_blocks[0].attn1.to_q, QuantLinear)
    with pytest.raises(UsageError, match="torchao cannot run nvfp4 here"):
        load_quantized(_w4a4("sana"), backend="torchao")


def test_torchao_nvfp4_tensor_holds_our_numbers():
    """Built from the stored codes and scales (no re-quantization): it dequantizes to our weight
    up to the order torchao multiplies the two scales in (a float32 ulp)."""
    model = load_quantized(_w4a4("sana"), activations="none")
    q = model.transformer_blocks[0].attn1.to_q
    qw = q.quantized_weight()
    t = nvfp4_torchao_weight(qw, torch.float32, "nvfp4")
    assert torch.equal(t.qdata, qw.data) and torch.equal(
        t.scale.view(torch.uint8), qw.scale.view(torch.uint8)
    )
    assert torch.allclose(t.dequantize(torch.float32), q.dequantized_weight(), rtol=2e-7, atol=0)
    assert torch.allclose(t.act_per_tensor_scale * qw.input_global_scale, torch.ones(()), rtol=1e-6)


def test_bad_input_is_one_line_exit_2(run_cli, tmp_path):
    src = _pipe("sana") / "transformer"
    dst = tmp_path / "out"
    cases = [
        (["--scheme", "nvfp4", "--activations", "nvfp4"], "needs calibrated activation ranges"),
        (["--scheme", "int8", "--activations", "nvfp4", "--calibrate"], "does not go with --scheme int8"),
        (["--scheme", "mxfp4", "--activations", "nvfp4", "--calibrate"], "does not go with --scheme mxfp4"),
        (["--scheme", "nvfp4", "--seeds", "0,1"], "--seeds shapes the calibration run"),
        (["--scheme", "int8", "--calibrate"], "--calibrate sets static activation scales"),
        (
            ["--scheme", "gguf:Q8_0", "--calibrate"],
            "--calibrate, --sensitivity and --fp-layers apply to int8/fp8/int4/fp4 schemes",
        ),
    ]
    for args, needle in cases:
        r = run_cli("quantize", src, dst, *args)
        assert r.code == 2 and needle in r.words, (args, r.err)
        assert len(r.err.strip().splitlines()) == 1 and not dst.exists(), r.err
    with pytest.raises(UsageError, match="finite number >= 0"):
        quantize_linear(
            src, dst, "nvfp4", activations="nvfp4", activation_absmax={"x": float("nan")}, progress=False
        )
    assert not dst.exists()


def test_non_finite_activations_are_refused_naming_the_layer(run_cli, tmp_path):
    folder = tmp_path / "overflow"
    import shutil

    shutil.copytree(_pipe("sana") / "transformer", folder)
    f = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    state["transformer_blocks.0.attn1.to_q.weight"].mul_(1e38)  # finite weights, overflowing activations
    save_file(state, str(f))
    dst = tmp_path / "out"
    r = run_cli(
        "quantize",
        folder,
        dst,
        "--scheme",
        "nvfp4",
        "--activations",
        "nvfp4",
        "--calibrate",
        *_gen_args("sana"),
    )
    assert r.code == 2 and "receives non-finite activations" in r.words, r.err
    assert len(r.err.strip().splitlines()) == 1 and not dst.exists()
    with pytest.raises(InputError, match="non-finite"):
        calibrate_activations(str(folder), _settings("sana", (0,)), progress=False)


def test_cli_calibrates_and_writes_w4a4(run_cli, tmp_path):
    dst = tmp_path / "cli-w4a4"
    src = _pipe("wan") / "transformer"
    r = run_cli(
        "quantize",
        src,
        dst,
        "--scheme",
        "nvfp4",
        "--activations",
        "nvfp4",
        "--calibrate",
        "--seeds",
        "0,1",
        *_gen_args("wan"),
    )
    assert r.code == 0, r.err
    assert "calibration: max |input|" in r.err and "W4A4 nvfp4 activations" in r.err
    stored = _stored(dst)
    api = _stored(_w4a4("wan"))  # the same calibration through the API: the same bytes
    assert sorted(stored) == sorted(api)
    assert all(torch.equal(stored[k].view(torch.uint8), api[k].view(torch.uint8)) for k in stored)


def test_verify_scores_a_w4a4_candidate(tmp_path):
    """verify loads the W4A4 folder (activations fake-quantized) and scores it; weight-only nvfp4
    of the same weights scores higher, since only the activations differ."""
    from weightsmith.verify import VerifyOptions, verify

    weight_only = tmp_path / "sana-nvfp4"
    quantize_linear(_pipe("sana") / "transformer", weight_only, "nvfp4", progress=False, device="cpu")
    res = verify(
        VerifyOptions(
            str(_pipe("sana")),
            [str(_w4a4("sana")), str(weight_only)],
            _settings("sana", (0,)),
            cache_dir=tmp_path / "cache",
            progress=False,
        )
    )
    w4a4, w4a16 = (c.worst["latent_sqnr"] for c in res.candidates)
    assert 3 < w4a4 < w4a16 < 60, (w4a4, w4a16)


def test_demo_adds_nvfp4_for_sana_only():
    from weightsmith.verify.family import demo_models, demo_schemes
    from weightsmith.verify.matrix import available_schemes

    own = {f: tuple(available_schemes(demo_schemes(f))) for f, _ in demo_models()}
    assert own == {"sana": ("nvfp4",), "wan": (), "cogvideox": ()}


def test_w4a4_needs_its_scales_at_load(tmp_path):
    weight_only = tmp_path / "wo"
    quantize_linear(_pipe("sana") / "transformer", weight_only, "nvfp4", progress=False, device="cpu")
    with pytest.raises(UsageError, match="weight-only"):
        load_quantized(weight_only, activations="nvfp4")
    with pytest.raises(UsageError, match="do not go with mxfp4"):
        mx = tmp_path / "mx"
        quantize_linear(_pipe("sana") / "transformer", mx, "mxfp4", progress=False, device="cpu")
        load_quantized(mx, activations="nvfp4")


def test_loader_wires_torchao_nvfp4_where_selected(monkeypatch):
    """Where the selection says torchao can run (an sm100 GPU), the loader puts an NVFP4Tensor
    built from the stored numbers into the Linear; its weight-only forward (dequantize + linear,
    which runs on CPU too) matches the reference layer's."""
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor

    import weightsmith.quantize.linear.runtime as runtime

    ref = load_quantized(_w4a4("sana"), activations="none").transformer_blocks[0].attn1.to_q
    monkeypatch.setattr(runtime, "fp4_torchao_unsupported", lambda *a, **k: None)
    model = load_quantized(_w4a4("sana"), activations="none", backend="auto")
    lin = model.transformer_blocks[0].attn1.to_q
    assert type(lin) is nn.Linear and isinstance(lin.weight, NVFP4Tensor)
    assert lin.weight.act_quant_kwargs is None  # weight-only asked for
    x = torch.randn(3, ref.in_features, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(lin(x), ref(x), rtol=1e-5, atol=1e-6)
    w4a4 = load_quantized(_w4a4("sana"), backend="auto").transformer_blocks[0].attn1.to_q.weight
    assert w4a4.act_quant_kwargs is not None and w4a4.act_per_tensor_scale is not None
