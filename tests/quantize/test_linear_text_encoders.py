"""fp8 and int8 text encoders, in the layouts their consumers load.

ComfyUI (read from Comfy-Org/ComfyUI: comfy/sd.py ``detect_te_model`` / ``t5xxl_detect``,
comfy/text_encoders/sd3_clip.py ``t5_xxl_detect``, t5.py, wan.py, comfy/ops.py ``scaled_fp8_ops``;
newer releases turn the legacy layout into comfy_quant with ``convert_old_quants`` and read
per-layer ``comfy_quant`` in text encoders too) loads a T5-XXL / UMT5-XXL single file whose keys
are transformers' ``T5EncoderModel`` names without a prefix (``shared.weight``, ``encoder.block.N
...``): it tells a T5-XXL by ``encoder.block.23.layer.1.DenseReluDense.wi_1.weight`` (4096 wide),
takes its dtype from ``encoder.final_layer_norm.weight`` and the scaled-fp8 dtype from the
``scaled_fp8`` marker; only its Linear layers (q/k/v/o, wi_0/wi_1/wo) are scaled fp8
(``scale_weight`` float32 scalar); ``shared`` and ``relative_attention_bias`` are Embeddings and
the norms plain, all in the file's float dtype. T5 vs UMT5 comes from the loader's model type (a
UMT5 config builds a bias table in every block, T5 in block 0 only), so the file holds exactly
the tables the class has.

compressed-tensors folders load with transformers' ``from_pretrained`` as the right class, with
weights equal to our dequantized ones (T5/UMT5 int8 as ``int-quantized``: their ``_init_weights``
reads ``Linear.weight``, which ``pack-quantized`` layers do not have).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from textenc_kit import t5_folder
from tolerances import assert_forward_close

from weightsmith.quantize.linear.run import quantize_linear

CLASSES = {"wan": "UMT5EncoderModel", "cogvideox": "T5EncoderModel", "sana": "Gemma2Model"}
T5_FAMILIES = ("wan", "cogvideox")
# ComfyUI's T5 module: its Linear layers per block (everything else is an Embedding or a norm).
COMFY_T5_LINEARS = re.compile(
    r"encoder\.block\.\d+\.layer\.(0\.SelfAttention\.[qkvo]|1\.DenseReluDense\.(wi_0|wi_1|wo))"
)
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 1]])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("te-linear")
    out = {fam: t5_folder(root / fam, fam, tokenizer=False) for fam in T5_FAMILIES}
    from weightsmith.families import get_component

    comp = get_component("sana", "text_encoder")
    comp.tiny_model(comp.variants[0], seed=0).save_pretrained(str(root / "sana"))
    out["sana"] = root / "sana"
    return out


def _tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def _bits(t: torch.Tensor) -> torch.Tensor:
    assert t.dtype == torch.float32
    return t.contiguous().view(torch.int32)


def _comfyui_dequantize(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What ComfyUI builds of a float8_e4m3fn layer (comfy-kitchen's QuantizedTensor, CPU eager
    backend), dequantized in float32, its compute dtype on CPU."""
    from comfy_kitchen.tensor import QuantizedTensor, TensorCoreFP8Layout

    params = TensorCoreFP8Layout.Params(scale=scale, orig_dtype=torch.float32, orig_shape=tuple(w.shape))
    return QuantizedTensor(w, "TensorCoreFP8Layout", params).dequantize()


def _plain(src: Path, tmp: Path, run_cli) -> dict[str, torch.Tensor]:
    r = run_cli("convert", src, tmp / "plain", "--to", "transformers", "--dtype", "fp32")
    assert r.code == 0, r.err
    return load_file(str(tmp / "plain" / "model.safetensors"))


@pytest.mark.parametrize("fmt", ["comfy-legacy", "comfy"])
@pytest.mark.parametrize("family", T5_FAMILIES)
def test_comfyui_text_encoder_file_follows_comfyuis_loader(family, fmt, folders, tmp_path, run_cli):
    import transformers

    dst = tmp_path / "te-fp8.safetensors"
    quantize_linear(folders[family], dst, "fp8", format=fmt, progress=False, device="cpu")
    t, _ = _tensors(dst)
    src = getattr(transformers, CLASSES[family]).from_pretrained(str(folders[family]))
    state = {k: v for k, v in src.state_dict().items() if k != "encoder.embed_tokens.weight"}
    n = src.config.num_layers
    # detection: the last block's wi_1 (block 23 in a T5-XXL), the final norm's dtype; no prefix
    assert f"encoder.block.{n - 1}.layer.1.DenseReluDense.wi_1.weight" in t
    assert t["encoder.final_layer_norm.weight"].dtype == torch.float32
    assert "shared.weight" in t and not any(k.startswith(("model.", "text_encoders.")) for k in t)
    # one bias table per block for UMT5, block 0's only for T5: what ComfyUI's config builds
    bias = sorted(k for k in t if "relative_attention_bias" in k)
    assert len(bias) == (n if family == "wan" else 1)
    linears = {
        k.removesuffix(".weight") for k in state if COMFY_T5_LINEARS.fullmatch(k.removesuffix(".weight"))
    }
    assert len(linears) == 7 * n
    scale = "scale_weight" if fmt == "comfy-legacy" else "weight_scale"
    if fmt == "comfy-legacy":
        assert t["scaled_fp8"].dtype == torch.float8_e4m3fn and t["scaled_fp8"].numel() == 0
        extra = {"scaled_fp8"}
    else:
        assert "scaled_fp8" not in t
        for layer in linears:
            conf = json.loads(bytes(t[f"{layer}.comfy_quant"].tolist()).decode())
            assert conf == {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}, layer
        extra = {f"{layer}.comfy_quant" for layer in linears}
    assert set(t) == set(state) | {f"{layer}.{scale}" for layer in linears} | extra
    plain = _plain(dst, tmp_path, run_cli)
    assert sorted(plain) == sorted(state)
    for k in state:
        layer = k.removesuffix(".weight")
        if layer in linears:
            w, s = t[k], t[f"{layer}.{scale}"]
            assert w.dtype == torch.float8_e4m3fn and s.dtype == torch.float32 and s.shape == (), k
            theirs = _comfyui_dequantize(w, s)
            assert torch.equal(_bits(theirs), _bits(w.float() * s)), k
            assert torch.equal(_bits(plain[k]), _bits(theirs)), k
        else:  # Embeddings and norms: as stored, never quantized
            assert t[k].dtype == torch.float32 and torch.equal(_bits(t[k]), _bits(state[k])), k
            assert torch.equal(_bits(plain[k]), _bits(t[k])), k


def test_wan_original_layout_gives_the_same_comfyui_file(folders, tmp_path, run_cli):
    orig = tmp_path / "models_t5_umt5-xxl-enc.safetensors"
    r = run_cli("convert", folders["wan"], orig, "--to", "original")
    assert r.code == 0, r.err
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for src, dst in ((folders["wan"], a), (orig, b)):
        quantize_linear(src, dst, "fp8-tensor", format="comfy-legacy", progress=False, device="cpu")
    ta, tb = _tensors(a)[0], _tensors(b)[0]
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(
            ta[k].reshape(-1).view(torch.uint8), tb[k].reshape(-1).view(torch.uint8)
        ), k


@pytest.mark.parametrize("scheme", ["int8", "fp8"])
@pytest.mark.parametrize("family", list(CLASSES))
def test_transformers_loads_our_compressed_tensors_text_encoder(family, scheme, folders, tmp_path, run_cli):
    import transformers

    dst = tmp_path / f"te-{scheme}"
    quantize_linear(folders[family], dst, scheme, progress=False, device="cpu")
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    if scheme == "int8":  # T5/UMT5 code reads Linear.weight: no weight_packed there
        assert qc["format"] == ("pack-quantized" if family == "sana" else "int-quantized")
    cls = getattr(transformers, CLASSES[family])
    theirs = cls.from_pretrained(str(dst)).eval()
    deq = _plain(dst, tmp_path, run_cli)
    ours = cls.from_pretrained(str(tmp_path / "plain")).eval()
    with torch.no_grad():  # the first forward decompresses the layers compressed-tensors holds
        got, want = theirs(IDS).last_hidden_state, ours(IDS).last_hidden_state
    assert_forward_close(got, want)
    a = theirs.state_dict()
    for k, v in deq.items():
        assert torch.equal(_bits(a[k].float()), _bits(v)), k
    q = (
        "encoder.block.0.layer.0.SelfAttention.q.weight"
        if family != "sana"
        else "layers.0.self_attn.q_proj.weight"
    )
    assert not torch.equal(deq[q], load_file(str(folders[family] / "model.safetensors"))[q])


@pytest.mark.parametrize("artifact", ["comfy-legacy", "int8"])
def test_loader_keeps_text_encoder_layers_quantized(artifact, folders, tmp_path, run_cli):
    """weightsmith.load: the right class, Linear layers kept quantized (T5's FFN reads wo.weight),
    and the forward of the dequantized model."""
    import transformers

    from weightsmith.load import load_model, load_quantized
    from weightsmith.quantize.linear.runtime import QuantLinear

    dst = tmp_path / ("te.safetensors" if artifact == "comfy-legacy" else "te-int8")
    fmt = "comfy-legacy" if artifact == "comfy-legacy" else "compressed-tensors"
    quantize_linear(
        folders["cogvideox"],
        dst,
        "fp8" if artifact == "comfy-legacy" else "int8",
        format=fmt,
        progress=False,
        device="cpu",
    )
    model = load_quantized(dst, backend="reference")
    assert type(model).__name__ == "T5EncoderModel"
    assert isinstance(model.encoder.block[0].layer[1].DenseReluDense.wo, QuantLinear)
    assert model.encoder.embed_tokens.weight is model.shared.weight
    _plain(dst, tmp_path, run_cli)
    ref = transformers.T5EncoderModel.from_pretrained(str(tmp_path / "plain")).eval()
    with torch.no_grad():
        want = ref(IDS).last_hidden_state
        assert_forward_close(model(IDS).last_hidden_state, want)
        assert_forward_close(load_model(dst)(IDS).last_hidden_state, want)


def test_comfyui_file_of_sana_text_encoder_is_refused(folders, tmp_path, run_cli):
    dst = tmp_path / "gemma-fp8.safetensors"
    r = run_cli("quantize", folders["sana"], dst, "--scheme", "fp8", "--format", "comfy-legacy")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "ComfyUI has no Sana model" in r.words and "--format compressed-tensors" in r.words
    assert not dst.exists() and not list(tmp_path.iterdir())


def test_to_transformers_names_text_encoders_only(tiny_wan, tmp_path, run_cli):
    r = run_cli("convert", tiny_wan, tmp_path / "x", "--to", "transformers")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "has no 'diffusers' layout" not in r.words and "transformers" in r.words
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("quantize", "{te}", "{tmp}/x.safetensors", "--scheme", "fp8", "--calibrate"),
        ("sensitivity", "{te}", "--scheme", "int8"),
    ],
)
def test_text_encoder_where_a_transformer_is_expected(args, folders, tmp_path, run_cli):
    """Calibration and sensitivity run the transformer's generations: one line naming what to pass."""
    r = run_cli(*(a.format(te=folders["wan"], tmp=tmp_path) for a in args))
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "text_encoder, not a transformer" in r.words and "pass the transformer" in r.words
    assert not list(tmp_path.iterdir())
