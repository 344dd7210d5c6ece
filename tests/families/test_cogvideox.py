"""CogVideoX family: detection, SAT <-> Diffusers plans, configs and tiny models.

The SAT side is checked against an independent restatement of the official SAT -> Diffusers
converter (diffusers' scripts/convert_cogvideox_to_diffusers.py and CogVideo's
tools/convert_weight_sat2hf.py, as described in layouts.md 2.3/2.4), written here as plain
string operations so the test does not grade the module with its own tables.
"""

from __future__ import annotations

import functools

import pytest
import torch
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
from tolerances import assert_forward_close

from weightsmith.errors import ConversionError, UsageError
from weightsmith.families.base import DIFFUSION_PREFIX, get_component
from weightsmith.families.cogvideox import tiny_vae_config
from weightsmith.families.ops import Derive, Drop, Regroup, Spec, run_in_memory
from weightsmith.io.base import infos_from_state_dict

TRANSFORMER = get_component("cogvideox", "transformer")
VAE = get_component("cogvideox", "vae")
VARIANTS = TRANSFORMER.variants
# Diffusers-layout weights cannot tell the 1.0 T2V models apart: 2B (sincos) vs 5B (RoPE).
NEEDS_CONFIG = {"2b", "5b"}


@functools.cache
def _tiny(variant: str) -> CogVideoXTransformer3DModel:
    return TRANSFORMER.tiny_model(variant, seed=1)


@functools.cache
def _tiny_vae() -> AutoencoderKLCogVideoX:
    return VAE.tiny_model("default", seed=2)


def _state(variant: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) for k, v in _tiny(variant).state_dict().items()}


def _config(variant: str) -> dict:
    return dict(_tiny(variant).config)


def _to_sat(variant: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    sd = _state(variant, dtype)
    det = TRANSFORMER.detect(infos_from_state_dict(sd), _config(variant))
    return run_in_memory(TRANSFORMER.plan(det, infos_from_state_dict(sd), "sat"), sd)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:10]
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------
# The official SAT -> Diffusers mapping, restated independently (layouts.md 2.3 / 2.4)
# ------------------------------------------------------------------------------------------

OFFICIAL_TRANSFORMER_RENAMES = [
    ("transformer.final_layernorm", "norm_final"),
    ("transformer", "transformer_blocks"),
    ("attention", "attn1"),
    ("mlp", "ff.net"),
    ("dense_h_to_4h", "0.proj"),
    ("dense_4h_to_h", "2"),
    (".layers", ""),
    ("dense", "to_out.0"),
    ("input_layernorm", "norm1.norm"),
    ("post_attn1_layernorm", "norm2.norm"),
    ("time_embed.0", "time_embedding.linear_1"),
    ("time_embed.2", "time_embedding.linear_2"),
    ("ofs_embed.0", "ofs_embedding.linear_1"),
    ("ofs_embed.2", "ofs_embedding.linear_2"),
    ("mixins.patch_embed", "patch_embed"),
    ("mixins.final_layer.norm_final", "norm_out.norm"),
    ("mixins.final_layer.linear", "proj_out"),
    ("mixins.final_layer.adaLN_modulation.1", "norm_out.linear"),
    ("mixins.pos_embed.pos_embedding", "patch_embed.pos_embedding"),
]
OFFICIAL_DROPS = ("embed_tokens", "freqs_sin", "freqs_cos", "position_embedding")


def official_transformer_sat_to_diffusers(sat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "model.diffusion_model."
    sd = {}
    for key, value in sat.items():
        new = key[len(prefix) :]
        for find, repl in OFFICIAL_TRANSFORMER_RENAMES:
            new = new.replace(find, repl)
        sd[new] = value
    for key in list(sd):
        if "query_key_value" in key:
            q, k, v = torch.chunk(sd.pop(key), 3, dim=0)
            sd[key.replace("query_key_value", "to_q")] = q
            sd[key.replace("query_key_value", "to_k")] = k
            sd[key.replace("query_key_value", "to_v")] = v
        elif "query_layernorm_list" in key or "key_layernorm_list" in key:
            layer, wb = key.split(".")[-2:]
            which = "norm_q" if "query" in key else "norm_k"
            sd[f"transformer_blocks.{layer}.attn1.{which}.{wb}"] = sd.pop(key)
        elif "adaln_layer.adaLN_modulations" in key:
            layer, _, wb = key.split(".")[-3:]
            c = sd.pop(key).chunk(12, dim=0)
            sd[f"transformer_blocks.{layer}.norm1.linear.{wb}"] = torch.cat(c[0:3] + c[6:9])
            sd[f"transformer_blocks.{layer}.norm2.linear.{wb}"] = torch.cat(c[3:6] + c[9:12])
        elif any(d in key for d in OFFICIAL_DROPS):
            sd.pop(key)
    return sd


OFFICIAL_VAE_RENAMES = [
    ("block.", "resnets."),
    ("down.", "down_blocks."),
    ("downsample", "downsamplers.0"),
    ("upsample", "upsamplers.0"),
    ("nin_shortcut", "conv_shortcut"),
    ("encoder.mid.block_1", "encoder.mid_block.resnets.0"),
    ("encoder.mid.block_2", "encoder.mid_block.resnets.1"),
    ("decoder.mid.block_1", "decoder.mid_block.resnets.0"),
    ("decoder.mid.block_2", "decoder.mid_block.resnets.1"),
]


def official_vae_sat_to_diffusers(sat: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = {}
    for key, value in sat.items():
        new = key
        for find, repl in OFFICIAL_VAE_RENAMES:
            new = new.replace(find, repl)
        sd[new] = value
    for key in list(sd):
        if "loss" in key:
            sd.pop(key)
        elif "up." in key:
            parts = key.split(".")
            parts[1] = "up_blocks"
            parts[2] = str(4 - 1 - int(parts[2]))
            sd[".".join(parts)] = sd.pop(key)
    return sd


# ------------------------------------------------------------------------------------------
# Transformer
# ------------------------------------------------------------------------------------------


def test_registered_component() -> None:
    assert TRANSFORMER.layouts == ("sat", "diffusers", "comfy")
    assert set(VARIANTS) == {"2b", "5b", "5b-i2v", "1.5-5b", "1.5-5b-i2v"}
    assert TRANSFORMER.model_class() is CogVideoXTransformer3DModel
    assert VAE.model_class() is AutoencoderKLCogVideoX


@pytest.mark.parametrize("variant", VARIANTS)
def test_tiny_models_are_small_and_nonzero(variant: str) -> None:
    sd = _state(variant)
    assert sum(t.numel() * t.element_size() for t in sd.values()) < 1_000_000
    assert all(t.abs().sum() > 0 for t in sd.values())
    cfg = _config(variant)
    assert cfg["use_rotary_positional_embeddings"] == (variant != "2b")
    assert cfg["use_learned_positional_embeddings"] == (variant == "5b-i2v")
    assert (cfg["patch_size_t"] is not None) == variant.startswith("1.5")
    assert cfg["in_channels"] == (2 * cfg["out_channels"] if variant.endswith("i2v") else cfg["out_channels"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_detect_diffusers_from_weights(variant: str) -> None:
    infos = infos_from_state_dict(_state(variant))
    det = TRANSFORMER.detect(infos)
    assert (det.family, det.component, det.layout, det.prefix) == (
        "cogvideox",
        "transformer",
        "diffusers",
        "",
    )
    assert det.facts["hidden_size"] == 16 and det.facts["num_layers"] == 2
    assert det.facts["num_attention_heads"] == 2 and det.facts["attention_head_dim"] == 8
    assert det.facts["out_channels"] == 4
    if variant in NEEDS_CONFIG:
        assert det.variant is None
        assert any("use_rotary_positional_embeddings" in n for n in det.notes)
        assert TRANSFORMER.detect(infos, _config(variant)).variant == variant
    else:
        assert det.variant == variant


@pytest.mark.parametrize(
    ("variant", "dtype"),
    [(v, torch.float32) for v in VARIANTS] + [("2b", torch.bfloat16), ("1.5-5b-i2v", torch.float16)],
)
def test_round_trip_diffusers_sat_diffusers(variant: str, dtype: torch.dtype) -> None:
    sd = _state(variant, dtype)
    det = TRANSFORMER.detect(infos_from_state_dict(sd), _config(variant))
    assert (det.layout, det.variant) == ("diffusers", variant)
    ops = TRANSFORMER.plan(det, infos_from_state_dict(sd), "sat")
    sat = run_in_memory(ops, sd)
    assert all(k.startswith(DIFFUSION_PREFIX) for k in sat)
    assert f"{DIFFUSION_PREFIX}transformer.layers.1.attention.query_key_value.weight" in sat
    assert f"{DIFFUSION_PREFIX}mixins.adaln_layer.adaLN_modulations.1.1.bias" in sat
    assert all(t.dtype == dtype for t in sat.values())
    # Nothing is derived: SAT rebuilds the 2B's sincos table itself, and the official converter
    # would keep (and then strictly refuse) one we wrote.
    assert not [op for op in ops if isinstance(op, Derive)]

    # 2B and 5B SAT files differ in no weight; weightsmith's SAT output carries the config.
    sat_det = TRANSFORMER.detect(infos_from_state_dict(sat), _config(variant))
    assert (sat_det.layout, sat_det.variant, sat_det.prefix) == ("sat", variant, DIFFUSION_PREFIX)
    back = run_in_memory(TRANSFORMER.plan(sat_det, infos_from_state_dict(sat), "diffusers"), sat)
    _assert_same(back, sd)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sat_output_matches_official_converter(variant: str) -> None:
    sd = _state(variant)
    diffusers = official_transformer_sat_to_diffusers(_to_sat(variant))
    _assert_same(diffusers, sd)
    model = CogVideoXTransformer3DModel(**_config(variant))
    model.load_state_dict(diffusers, strict=True)


def test_plan_ops_are_the_documented_transforms() -> None:
    sd = _state("5b")
    det = TRANSFORMER.detect(infos_from_state_dict(sd), _config("5b"))
    ops = TRANSFORMER.plan(det, infos_from_state_dict(sd), "sat")
    kinds = [op.kind for op in ops]
    assert kinds.count("fused") == 2 * 2  # qkv weight + bias per block
    assert kinds.count("regrouped") == 2 * 2  # adaLN weight + bias per block
    adaln = next(op for op in ops if isinstance(op, Regroup) and op.kind == "regrouped")
    specs = adaln.out_specs([Spec(k, tuple(sd[k].shape), sd[k].dtype) for k in adaln.inputs])
    assert specs[0].shape == (12 * 16, 8)
    # The 12-chunk SAT order: shift/scale/gate (msa), shift/scale/gate (mlp), then the text stream.
    n1 = torch.arange(6.0).repeat_interleave(2)[:, None].expand(12, 3)
    n2 = (torch.arange(6.0) + 10).repeat_interleave(2)[:, None].expand(12, 3)
    (fused,) = adaln.apply([n1, n2])
    assert fused[::2, 0].tolist() == [0, 1, 2, 10, 11, 12, 3, 4, 5, 13, 14, 15]
    sat_sd = run_in_memory(ops, sd)
    sat_det = TRANSFORMER.detect(infos_from_state_dict(sat_sd))
    back_ops = TRANSFORMER.plan(sat_det, infos_from_state_dict(sat_sd), "diffusers")
    assert [op.kind for op in back_ops].count("split") == 4


def test_identity_plans_normalise_prefix() -> None:
    sd = _state("1.5-5b-i2v")
    prefixed = {DIFFUSION_PREFIX + k: v for k, v in sd.items()}
    det = TRANSFORMER.detect(infos_from_state_dict(prefixed))
    assert (det.layout, det.variant, det.prefix) == ("diffusers", "1.5-5b-i2v", DIFFUSION_PREFIX)
    _assert_same(
        run_in_memory(TRANSFORMER.plan(det, infos_from_state_dict(prefixed), "diffusers"), prefixed), sd
    )
    sat = run_in_memory(TRANSFORMER.plan(det, infos_from_state_dict(prefixed), "sat"), prefixed)
    bare = {k[len(DIFFUSION_PREFIX) :]: v for k, v in sat.items()}
    bare_det = TRANSFORMER.detect(infos_from_state_dict(bare))
    assert (bare_det.layout, bare_det.prefix, bare_det.variant) == ("sat", "", "1.5-5b-i2v")
    _assert_same(run_in_memory(TRANSFORMER.plan(bare_det, infos_from_state_dict(bare), "sat"), bare), sat)


@pytest.mark.parametrize("variant", ["5b", "1.5-5b-i2v", "2b"])
def test_config_from_sat_builds_an_equivalent_model(variant: str) -> None:
    src = _tiny(variant)
    sat = _to_sat(variant)
    # Tiny 1.0 T2V SAT weights cannot say 2B or 5B (real ones can, by width): their config can.
    sat_det = TRANSFORMER.detect(
        infos_from_state_dict(sat), _config(variant) if variant in ("2b", "5b") else None
    )
    sd = run_in_memory(TRANSFORMER.plan(sat_det, infos_from_state_dict(sat), "diffusers"), sat)
    cfg = TRANSFORMER.diffusers_config(sat_det, infos_from_state_dict(sd))
    assert cfg == TRANSFORMER.diffusers_config(sat_det, infos_from_state_dict(sat))
    model = CogVideoXTransformer3DModel.from_config(cfg)
    model.load_state_dict(sd, strict=True)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    frames = 2
    kwargs = {
        "hidden_states": torch.randn(1, frames, cfg["in_channels"], 8, 8, generator=gen),
        "encoder_hidden_states": torch.randn(1, src.config.max_text_seq_length, 8, generator=gen),
        "timestep": torch.tensor([7]),
        "return_dict": False,
    }
    if cfg["ofs_embed_dim"]:
        kwargs["ofs"] = torch.tensor([2.0])
    with torch.no_grad():
        expected = src(**kwargs)[0]
        got = model(**kwargs)[0]
    assert_forward_close(got, expected)


def test_config_round_trips_through_from_pretrained(tmp_path) -> None:
    variant = "5b-i2v"
    sd = _state(variant)
    det = TRANSFORMER.detect(infos_from_state_dict(sd))  # no config: sizes come from the table
    cfg = TRANSFORMER.diffusers_config(det, infos_from_state_dict(sd))
    for key in ("sample_height", "sample_width", "sample_frames", "max_text_seq_length", "in_channels"):
        assert cfg[key] == _config(variant)[key], key
    assert cfg["use_learned_positional_embeddings"] and cfg["use_rotary_positional_embeddings"]
    model = CogVideoXTransformer3DModel.from_config(cfg)
    model.load_state_dict(sd, strict=True)
    model.save_pretrained(tmp_path)
    again = CogVideoXTransformer3DModel.from_pretrained(tmp_path).state_dict()
    assert set(again) == set(sd)
    # diffusers keeps the buffer's construction dtype (float64) for the learned table
    assert all(torch.equal(again[k].to(sd[k].dtype), sd[k]) for k in sd)


@pytest.mark.parametrize(
    ("kwargs", "variant", "size", "rows"),
    [
        ({"num_attention_heads": 30, "num_layers": 30}, "2b", "2B", None),
        (
            {
                "num_attention_heads": 48,
                "num_layers": 42,
                "in_channels": 32,
                "use_rotary_positional_embeddings": True,
                "use_learned_positional_embeddings": True,
            },
            "5b-i2v",
            "5B",
            17776,
        ),
        (
            {
                "num_attention_heads": 48,
                "num_layers": 42,
                "in_channels": 32,
                "patch_size_t": 2,
                "ofs_embed_dim": 512,
                "use_rotary_positional_embeddings": True,
                "patch_bias": False,
                "sample_height": 300,
                "sample_width": 300,
                "sample_frames": 81,
            },
            "1.5-5b-i2v",
            "5B",
            None,
        ),
    ],
)
def test_released_shapes_plan_without_data(kwargs: dict, variant: str, size: str, rows: int | None) -> None:
    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**kwargs)
    infos = infos_from_state_dict(model.state_dict())
    det = TRANSFORMER.detect(infos)
    assert (det.variant, det.facts["size_label"]) == (variant, size)
    assert det.facts.get("pos_embedding_rows") == rows
    ops = TRANSFORMER.plan(det, infos, "sat")
    sat_infos = {}
    for op in ops:
        for spec in op.out_specs([Spec(k, infos[k].shape, infos[k].dtype) for k in op.inputs]):
            sat_infos[spec.name] = spec
    sat_fake = {k: torch.empty(s.shape, dtype=s.dtype, device="meta") for k, s in sat_infos.items()}
    sat_det = TRANSFORMER.detect(infos_from_state_dict(sat_fake))
    assert (sat_det.layout, sat_det.variant) == ("sat", variant)
    cfg = TRANSFORMER.diffusers_config(sat_det, infos_from_state_dict(sat_fake))
    for key, value in kwargs.items():
        assert cfg[key] == value, key
    if variant == "5b-i2v":
        assert (cfg["sample_height"], cfg["sample_width"], cfg["max_text_seq_length"]) == (60, 90, 226)


def test_sat_engine_extras_are_dropped_with_reasons() -> None:
    sat = dict(_to_sat("5b"))
    extras = {
        DIFFUSION_PREFIX + "mixins.pos_embed.freqs_sin": torch.ones(3, 8),
        DIFFUSION_PREFIX + "mixins.pos_embed.freqs_cos": torch.ones(3, 8),
        DIFFUSION_PREFIX + "transformer.position_embeddings.weight": torch.ones(4, 16),
        "conditioner.embedders.0.transformer.shared.weight": torch.ones(5, 8),
        "first_stage_model.encoder.conv_in.conv.weight": torch.ones(8, 3, 3, 3, 3),
    }
    sat.update(extras)
    det = TRANSFORMER.detect(infos_from_state_dict(sat))
    assert det.variant == "5b"  # RoPE buffers present
    ops = TRANSFORMER.plan(det, infos_from_state_dict(sat), "diffusers")
    drops = {op.src: op.reason for op in ops if isinstance(op, Drop)}
    assert set(drops) == set(extras) and all(drops.values())
    _assert_same(run_in_memory(ops, sat), _state("5b"))
    # Same layout keeps everything.
    same = run_in_memory(TRANSFORMER.plan(det, infos_from_state_dict(sat), "sat"), sat)
    assert set(same) == set(sat)
    # The official map also discards these tensors (apart from T5/VAE, which it never expects).
    official = official_transformer_sat_to_diffusers(
        {k: v for k, v in sat.items() if k.startswith(DIFFUSION_PREFIX)}
    )
    _assert_same(official, _state("5b"))


@pytest.mark.parametrize("layout", ["diffusers", "sat"])
def test_unknown_and_missing_keys_are_named(layout: str) -> None:
    sd = _state("1.5-5b") if layout == "diffusers" else _to_sat("1.5-5b")
    pre = "" if layout == "diffusers" else DIFFUSION_PREFIX
    extra = dict(sd)
    extra[pre + "transformer_blocks.0.attn1.to_x.weight"] = torch.ones(2)
    det = TRANSFORMER.detect(infos_from_state_dict(extra))
    with pytest.raises(ConversionError, match=r"to_x\.weight"):
        TRANSFORMER.plan(det, infos_from_state_dict(extra), "sat" if layout == "diffusers" else "diffusers")

    gone = (
        "transformer_blocks.1.attn1.to_k.bias"
        if layout == "diffusers"
        else "transformer.layers.1.attention.query_key_value.bias"
    )
    partial = {k: v for k, v in sd.items() if k != pre + gone}
    det = TRANSFORMER.detect(infos_from_state_dict(partial))
    with pytest.raises(ConversionError, match="missing.*" + gone.replace(".", r"\.")):
        TRANSFORMER.plan(det, infos_from_state_dict(partial), "diffusers")
    # A half-present optional group counts as missing too.
    no_ofs = {k: v for k, v in _state("1.5-5b-i2v").items() if k != "ofs_embedding.linear_2.weight"}
    det = TRANSFORMER.detect(infos_from_state_dict(no_ofs))
    with pytest.raises(ConversionError, match=r"ofs_embedding\.linear_2\.weight"):
        TRANSFORMER.plan(det, infos_from_state_dict(no_ofs), "sat")


def test_foreign_checkpoints_are_not_cogvideox() -> None:
    gen = torch.Generator().manual_seed(0)
    random_names = {f"layer{i}.thing.weight": torch.randn(3, 3, generator=gen) for i in range(5)}
    sd_vae_like = {
        "encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
        "decoder.mid_block.resnets.0.norm1.weight": torch.zeros(8),
        "encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(8, 8, 3, 3),
    }
    for sd in (random_names, sd_vae_like, {}):
        assert TRANSFORMER.detect(infos_from_state_dict(sd)) is None
        assert VAE.detect(infos_from_state_dict(sd)) is None
    assert TRANSFORMER.detect(infos_from_state_dict(_tiny_vae().state_dict())) is None
    assert VAE.detect(infos_from_state_dict(_state("5b"))) is None


def test_bad_target_layout_is_a_usage_error() -> None:
    sd = _state("1.5-5b")
    det = TRANSFORMER.detect(infos_from_state_dict(sd))
    with pytest.raises(UsageError):
        TRANSFORMER.plan(det, infos_from_state_dict(sd), "original")
    vae_sd = _tiny_vae().state_dict()
    with pytest.raises(UsageError):
        VAE.plan(VAE.detect(infos_from_state_dict(vae_sd)), infos_from_state_dict(vae_sd), "gguf")
    with pytest.raises(UsageError):
        TRANSFORMER.tiny_model("7b")


# ------------------------------------------------------------------------------------------
# VAE
# ------------------------------------------------------------------------------------------


def _vae_to_sat() -> dict[str, torch.Tensor]:
    sd = _tiny_vae().state_dict()
    det = VAE.detect(infos_from_state_dict(sd))
    return run_in_memory(VAE.plan(det, infos_from_state_dict(sd), "sat"), sd)


def test_vae_round_trip_and_official_mapping() -> None:
    sd = _tiny_vae().state_dict()
    assert sum(t.numel() * t.element_size() for t in sd.values()) < 1_000_000
    det = VAE.detect(infos_from_state_dict(sd))
    assert (det.family, det.component, det.layout, det.variant) == (
        "cogvideox",
        "vae",
        "diffusers",
        "default",
    )
    assert det.facts["block_out_channels"] == [8, 8, 16, 16] and det.facts["layers_per_block"] == 1
    sat = _vae_to_sat()
    assert "decoder.up.3.block.0.conv1.conv.weight" in sat  # diffusers up_blocks.0 is SAT's up.3
    assert "encoder.down.2.block.0.nin_shortcut.weight" in sat
    assert "decoder.mid.block_2.norm2.conv_b.conv.bias" in sat
    torch.testing.assert_close(
        sat["decoder.up.3.block.0.conv1.conv.weight"],
        sd["decoder.up_blocks.0.resnets.0.conv1.conv.weight"],
        rtol=0,
        atol=0,
    )

    sat_with_loss = dict(sat)
    sat_with_loss["loss.logvar"] = torch.zeros(())
    sat_with_loss["loss.discriminator.main.0.weight"] = torch.ones(4, 3, 4, 4)
    sat_det = VAE.detect(infos_from_state_dict(sat_with_loss))
    assert (sat_det.layout, sat_det.variant) == ("sat", "default")
    ops = VAE.plan(sat_det, infos_from_state_dict(sat_with_loss), "diffusers")
    assert sorted(op.src for op in ops if isinstance(op, Drop)) == [
        "loss.discriminator.main.0.weight",
        "loss.logvar",
    ]
    _assert_same(run_in_memory(ops, sat_with_loss), sd)
    _assert_same(official_vae_sat_to_diffusers(sat_with_loss), sd)
    # SAT -> SAT keeps the loss weights; a SAT engine's first_stage_model. prefix is understood.
    engine = {"first_stage_model." + k: v for k, v in sat.items()}
    engine_det = VAE.detect(infos_from_state_dict(engine))
    assert engine_det.prefix == "first_stage_model."
    _assert_same(run_in_memory(VAE.plan(engine_det, infos_from_state_dict(engine), "diffusers"), engine), sd)


def test_vae_config_builds_an_equivalent_model() -> None:
    src = _tiny_vae()
    sat = _vae_to_sat()
    sat_det = VAE.detect(infos_from_state_dict(sat), {"norm_num_groups": 2, "scaling_factor": 0.7})
    sd = run_in_memory(VAE.plan(sat_det, infos_from_state_dict(sat), "diffusers"), sat)
    cfg = VAE.diffusers_config(sat_det, infos_from_state_dict(sat))
    assert cfg == VAE.diffusers_config(sat_det, infos_from_state_dict(sd))
    for key, value in tiny_vae_config().items():
        assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    assert cfg["scaling_factor"] == 0.7
    model = AutoencoderKLCogVideoX.from_config(cfg)
    model.load_state_dict(sd, strict=True)
    model.eval()
    x = torch.randn(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z_src = src.encode(x).latent_dist.mode()
        z_new = model.encode(x).latent_dist.mode()
        assert_forward_close(z_new, z_src)
        assert_forward_close(model.decode(z_src).sample, src.decode(z_src).sample)
    # Without the config the group count is not in the weights; a fitting one is chosen.
    plain = VAE.diffusers_config(VAE.detect(infos_from_state_dict(sd)), infos_from_state_dict(sd))
    AutoencoderKLCogVideoX.from_config(plain).load_state_dict(sd, strict=True)


def test_vae_unknown_and_missing_keys_are_named() -> None:
    sat = _vae_to_sat()
    extra = dict(sat)
    extra["decoder.up.1.attn.0.q.weight"] = torch.ones(2)
    with pytest.raises(ConversionError, match=r"decoder\.up\.1\.attn\.0\.q\.weight"):
        VAE.plan(VAE.detect(infos_from_state_dict(extra)), infos_from_state_dict(extra), "diffusers")
    partial = {k: v for k, v in sat.items() if k != "decoder.up.0.block.1.conv2.conv.bias"}
    with pytest.raises(ConversionError, match=r"missing.*decoder\.up\.0\.block\.1\.conv2\.conv\.bias"):
        VAE.plan(VAE.detect(infos_from_state_dict(partial)), infos_from_state_dict(partial), "diffusers")
    no_shortcut_bias = {k: v for k, v in sat.items() if k != "encoder.down.2.block.0.nin_shortcut.bias"}
    with pytest.raises(ConversionError, match=r"nin_shortcut\.bias"):
        VAE.plan(
            VAE.detect(infos_from_state_dict(no_shortcut_bias)),
            infos_from_state_dict(no_shortcut_bias),
            "diffusers",
        )
