"""GGUF quantization end to end: recipes, the streaming writer, gguf's reader and dequantizer,
diffusers' own GGUF loader for Wan and Sana, and weightsmith's loader for every family."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from diffusers import GGUFQuantizationConfig

from weightsmith.families import get_component
from weightsmith.io.base import infos_from_state_dict
from weightsmith.kernels.ggml import dequantize
from weightsmith.load import load_gguf_model
from weightsmith.quantize.gguf.loader import GGMLLinear
from weightsmith.quantize.gguf.recipes import RECIPES, assign_types, get_recipe
from weightsmith.quantize.gguf.run import quantize_gguf

# Tiny models whose Linear rows are 256 wide, so every K-type applies.
WIDE = {
    "wan": (
        "2.1-t2v",
        dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=64,
            freq_dim=256,
            ffn_dim=512,
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
            num_layers=1,
            attention_head_dim=32,
            num_attention_heads=8,
            num_cross_attention_heads=8,
            cross_attention_head_dim=32,
            cross_attention_dim=256,
            caption_channels=64,
            sample_size=8,
        ),
    ),
    "cogvideox": (
        "5b",
        dict(
            num_attention_heads=4,
            attention_head_dim=64,
            in_channels=4,
            out_channels=4,
            time_embed_dim=8,
            text_embed_dim=16,
            num_layers=1,
            sample_width=8,
            sample_height=8,
            sample_frames=5,
            patch_size=2,
            max_text_seq_length=4,
            use_rotary_positional_embeddings=True,
        ),
    ),
}


def _wide_model(family: str):
    variant, cfg = WIDE[family]
    cls = get_component(family, "transformer").model_class(variant)
    torch.manual_seed(0)
    model = cls(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    out = {}
    for family in WIDE:
        folder = tmp_path_factory.mktemp(family) / "transformer"
        model = _wide_model(family)
        model.save_pretrained(str(folder))
        out[family] = (model, folder)
    return out


def _inputs(family: str, model):
    g = torch.Generator().manual_seed(1)
    if family == "wan":
        return dict(
            hidden_states=torch.randn(1, 16, 2, 8, 8, generator=g),
            timestep=torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 5, 64, generator=g),
        )
    if family == "sana":
        return dict(
            hidden_states=torch.randn(1, 4, 8, 8, generator=g),
            timestep=torch.tensor([500]),
            encoder_hidden_states=torch.randn(1, 5, 64, generator=g),
        )
    return dict(
        hidden_states=torch.randn(1, 2, 4, 8, 8, generator=g),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 4, 16, generator=g),
    )


def _agree(ours, theirs, family):
    """Our loader and diffusers' decode the same blocks. diffusers computes scale x quant in the
    scale's float16 (one or two roundings), ours in float32 exactly as gguf-py does, so weights
    agree to within float16 rounding and the outputs to that."""
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

    mods = dict(theirs.named_modules())
    checked = 0
    for name, mod in ours.named_modules():
        if isinstance(mod, GGMLLinear):
            w = dequantize_gguf_tensor(mods[name].weight)
            ref = mod.dequantized_weight()
            # A few float16 ulps of the largest weight (K-quants subtract two f16-rounded products).
            assert float((w.float() - ref).abs().max()) <= 4e-3 * float(ref.abs().max()), name
            checked += 1
    a, b = _run(ours, family), _run(theirs, family)
    assert float((a - b).norm() / b.norm()) < 2e-3
    return checked


def _run(model, family):
    with torch.no_grad():
        return model(**_inputs(family, model), return_dict=False)[0]


def _meta_original_names(family: str, variant: str, cfg: dict):
    comp = get_component(family, "transformer")
    with torch.device("meta"):
        model = comp.model_class(variant)(**cfg)
    infos = infos_from_state_dict(model.state_dict())
    det = comp.detect(infos, cfg)
    target = "original" if "original" in comp.layouts else "sat"
    from weightsmith.families.ops import Spec

    out = []
    for op in comp.plan(det, infos, target):
        for s in op.out_specs([Spec(k, infos[k].shape, infos[k].dtype) for k in op.inputs]):
            out.append((s.name.removeprefix("model.diffusion_model."), s.shape))
    return out


WAN_14B = dict(
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
)


def test_q4_k_m_raises_attention_v_and_ffn_down_on_wan14b():
    types = assign_types(get_recipe("Q4_K_M"), "wan", _meta_original_names("wan", "2.1-t2v", WAN_14B)).types()
    assert types["blocks.7.self_attn.v.weight"] == "Q6_K"
    assert types["blocks.7.cross_attn.v.weight"] == "Q6_K"
    assert types["blocks.7.ffn.2.weight"] == "Q6_K"
    assert types["blocks.7.self_attn.q.weight"] == "Q4_K"
    assert types["blocks.7.ffn.0.weight"] == "Q4_K"
    # Kept in float: modulation (F32), 1-D (F32), 5-D patch embedding (F32), embeddings and head (F16).
    assert types["blocks.7.modulation"] == "F32"
    assert types["head.modulation"] == "F32"
    assert types["blocks.7.self_attn.q.bias"] == "F32"
    assert types["patch_embedding.weight"] == "F32"
    assert types["text_embedding.0.weight"] == "F16"
    assert types["time_projection.1.weight"] == "F16"
    assert types["head.head.weight"] == "F16"


def test_q4_k_s_raises_only_the_first_four_v_in_file_order():
    types = assign_types(get_recipe("Q4_K_S"), "wan", _meta_original_names("wan", "2.1-t2v", WAN_14B)).types()
    raised = sorted(k for k, v in types.items() if k.endswith(".v.weight") and v == "Q5_K")
    assert raised == [
        "blocks.0.cross_attn.v.weight",
        "blocks.0.self_attn.v.weight",
        "blocks.1.cross_attn.v.weight",
        "blocks.1.self_attn.v.weight",
    ]
    assert types["blocks.10.self_attn.v.weight"] == "Q4_K"
    assert types["blocks.3.ffn.2.weight"] == "Q5_K"


def test_rows_not_multiple_of_256_fall_back():
    cog2b = dict(num_attention_heads=30, attention_head_dim=64, num_layers=2)
    types = assign_types(
        get_recipe("Q4_K_M"), "cogvideox", _meta_original_names("cogvideox", "2b", cog2b)
    ).types()
    assert types["transformer.layers.0.attention.dense.weight"] == "Q5_0"  # 1920 rows: Q4_K -> Q5_0
    assert types["transformer.layers.0.attention.query_key_value.weight"] == "Q5_1"  # Q5_K -> Q5_1
    # Rows are the input width: the FFN-down's 7680 = 30 x 256 keeps its Q6_K.
    assert types["transformer.layers.0.mlp.dense_4h_to_h.weight"] == "Q6_K"
    sana600 = dict(
        num_attention_heads=36,
        attention_head_dim=32,
        num_layers=1,
        num_cross_attention_heads=16,
        cross_attention_head_dim=72,
        cross_attention_dim=1152,
        caption_channels=2304,
    )
    types = assign_types(get_recipe("Q2_K"), "sana", _meta_original_names("sana", "1.0", sana600)).types()
    assert types["blocks.0.attn.qkv.weight"] == "IQ4_NL"  # 1152 rows: Q2_K -> IQ4_NL
    assert types["blocks.0.mlp.inverted_conv.conv.weight"] == "F16"  # convolutions are never quantized


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_wan_recipe_loads_in_diffusers_and_ours(wide, tmp_path, recipe):
    model, folder = wide["wan"]
    dst = tmp_path / f"wan-{recipe}.gguf"
    result = quantize_gguf(folder, dst, f"gguf:{recipe}", progress=False)
    # gguf's own reader reads it, metadata included, and its dequantizer agrees with ours bit for bit.
    reader = gguf.GGUFReader(str(dst))
    fields = {k: v for k, v in reader.fields.items()}
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "wan"
    assert int(fields["general.file_type"].parts[-1][0]) == int(gguf.LlamaFileType[RECIPES[recipe].file_type])
    assert int(fields["general.quantization_version"].parts[-1][0]) == 2
    assert bytes(fields["weightsmith.scheme"].parts[-1]).decode() == f"gguf:{recipe}"
    names = {t.name for t in reader.tensors}
    assert "patch_embedding.weight" in names and "blocks.0.self_attn.q.weight" in names
    for t in reader.tensors:
        qt = gguf.GGMLQuantizationType(t.tensor_type)
        if qt.name in ("F32", "F16"):
            continue
        shape = tuple(reversed([int(d) for d in t.shape]))
        ref = gguf.quants.dequantize(np.array(t.data), qt).reshape(shape)
        ours = dequantize(torch.from_numpy(np.array(t.data)), qt.name, shape)
        assert np.array_equal(ref.astype(np.float32), ours.numpy()), t.name
    # 5-D patch embedding stored as a 5-D F32 tensor, no fix-up step.
    pe = next(t for t in reader.tensors if t.name == "patch_embedding.weight")
    assert len(pe.shape) == 5 and gguf.GGMLQuantizationType(pe.tensor_type).name == "F32"
    ours = load_gguf_model(dst)
    theirs = (
        type(model)
        .from_single_file(
            str(dst),
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            config=str(folder),
            local_files_only=True,
        )
        .eval()
    )
    checked = _agree(ours, theirs, "wan")
    assert checked > 0 or RECIPES[recipe].float_recipe
    if recipe == "F32":
        torch.testing.assert_close(_run(ours, "wan"), _run(model, "wan"), atol=1e-6, rtol=1e-6)
    assert result.layers and (dst.with_name(dst.name + ".layers.json")).is_file()


@pytest.mark.parametrize("recipe", ["Q8_0", "Q4_K_M", "Q3_K_S", "IQ4_XS", "F16"])
def test_sana_loads_in_diffusers_and_ours(wide, tmp_path, recipe):
    model, folder = wide["sana"]
    dst = tmp_path / f"sana-{recipe}.gguf"
    quantize_gguf(folder, dst, f"gguf:{recipe}", progress=False)
    ours = load_gguf_model(dst)
    theirs = (
        type(model)
        .from_single_file(
            str(dst),
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            config=str(folder),
            local_files_only=True,
        )
        .eval()
    )
    assert (_agree(ours, theirs, "sana") > 0) == (recipe != "F16")


@pytest.mark.parametrize("recipe", ["Q8_0", "Q4_K_M", "Q2_K"])
def test_cogvideox_loads_in_ours(wide, tmp_path, recipe):
    model, folder = wide["cogvideox"]
    dst = tmp_path / f"cog-{recipe}.gguf"
    quantize_gguf(folder, dst, f"gguf:{recipe}", progress=False)
    reader = gguf.GGUFReader(str(dst))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "cogvideox"
    assert "transformer.layers.0.attention.query_key_value.weight" in {t.name for t in reader.tensors}
    ours = load_gguf_model(dst)
    ref = _run(model, "cogvideox")
    out = _run(ours, "cogvideox")
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum())
    assert sqnr > {"Q8_0": 30, "Q4_K_M": 15, "Q2_K": 5}[recipe], float(sqnr)


def test_output_sqnr_orders_with_bits(wide, tmp_path):
    model, folder = wide["wan"]
    ref = _run(model, "wan")
    scores = {}
    for recipe in ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K"):
        dst = tmp_path / f"{recipe}.gguf"
        quantize_gguf(folder, dst, f"gguf:{recipe}", progress=False)
        out = _run(load_gguf_model(dst), "wan")
        scores[recipe] = float(10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum()))
    assert scores["Q8_0"] > scores["Q6_K"] > scores["Q4_K_M"] > scores["Q3_K_M"] > scores["Q2_K"], scores


def test_imatrix_changes_k_quant_bytes(wide, tmp_path):
    from weightsmith.quantize.gguf.imatrix import write_imatrix

    _, folder = wide["wan"]
    g = torch.Generator().manual_seed(3)
    names = ["blocks.0.self_attn.q.weight", "blocks.0.ffn.0.weight", "blocks.1.ffn.2.weight"]
    sums = {n: torch.rand(512 if n.endswith("ffn.2.weight") else 256, generator=g) * 10 for n in names}
    write_imatrix(tmp_path / "im.gguf", sums, {n: 4 for n in names})
    plain = quantize_gguf(folder, tmp_path / "a.gguf", "gguf:Q4_K_M", progress=False)
    weighted = quantize_gguf(
        folder, tmp_path / "b.gguf", "gguf:Q4_K_M", imatrix=tmp_path / "im.gguf", progress=False
    )
    ra, rb = gguf.GGUFReader(str(tmp_path / "a.gguf")), gguf.GGUFReader(str(tmp_path / "b.gguf"))
    da = {t.name: np.array(t.data) for t in ra.tensors}
    db = {t.name: np.array(t.data) for t in rb.tensors}
    for n in names:
        assert not np.array_equal(da[n], db[n]), n
    assert np.array_equal(da["blocks.1.ffn.0.weight"], db["blocks.1.ffn.0.weight"])  # no entry: unchanged
    assert {r.name for r in weighted.layers if r.imatrix} == set(names)
    assert not any(r.imatrix for r in plain.layers)
    assert "weightsmith.imatrix.sha256" in rb.fields


def test_keep_glob_and_layer_report(wide, tmp_path):
    _, folder = wide["wan"]
    dst = tmp_path / "k.gguf"
    quantize_gguf(folder, dst, "gguf:Q4_0", keep=("blocks.0.*",), progress=False)
    report = json.loads((tmp_path / "k.gguf.layers.json").read_text())
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["blocks.0.self_attn.q.weight"]["type"] == "F16"
    assert rows["blocks.0.self_attn.q.weight"]["reason"] == "--keep"
    assert rows["blocks.1.self_attn.q.weight"]["type"] == "Q4_0"
    assert rows["blocks.1.ffn.2.weight"]["type"] == "Q4_1"
    assert 20 < rows["blocks.1.self_attn.q.weight"]["sqnr_db"] < 30
    assert (
        rows["blocks.1.self_attn.q.weight"]["bytes_after"] * 7
        < rows["blocks.1.self_attn.q.weight"]["bytes_before"]
    )


def test_output_is_deterministic(wide, tmp_path):
    _, folder = wide["wan"]
    quantize_gguf(folder, tmp_path / "1.gguf", "gguf:Q3_K_M", progress=False)
    quantize_gguf(folder, tmp_path / "2.gguf", "gguf:Q3_K_M", progress=False)
    assert (tmp_path / "1.gguf").read_bytes() == (tmp_path / "2.gguf").read_bytes()


def test_cli_errors(wide, tmp_path, run_cli):
    _, folder = wide["wan"]
    r = run_cli("quantize", folder, tmp_path / "x.gguf", "--scheme", "gguf:Q9_K")
    assert r.code == 2 and "unknown GGUF recipe" in r.words, r.err
    r = run_cli("quantize", folder, tmp_path / "x.bin", "--scheme", "gguf:Q8_0")
    assert r.code == 2 and ".gguf" in r.words, r.err
    r = run_cli("quantize", folder, tmp_path / "x.gguf", "--scheme", "nonsense")
    assert r.code == 2 and "unknown scheme" in r.words, r.err
    from weightsmith.tiny import Fixture, save_fixture

    vae = save_fixture(Fixture("wan", "vae", "2.1", "diffusers", "diffusers-folder"), tmp_path)
    r = run_cli("quantize", vae, tmp_path / "v.gguf", "--scheme", "gguf:Q8_0")
    assert r.code == 2 and "transformers" in r.words, r.err
    assert not list(tmp_path.glob("*.gguf"))
    r = run_cli("quantize", folder, tmp_path / "ok.gguf", "--scheme", "gguf:Q8_0")
    assert r.code == 0, r.err
    assert "Q8_0" in r.words and "SQNR" in r.words
