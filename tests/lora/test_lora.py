"""LoRA formats and fusing, checked against Diffusers' own LoRA loaders on tiny real models.

What is proven here:
* Wan: PEFT -> original -> PEFT is bit-identical; our original-format file, run through Diffusers'
  own ``_convert_non_diffusers_wan_lora_to_diffusers`` (and musubi files through
  ``_convert_musubi_wan_lora_to_diffusers``), gives what our PEFT writer gives.
* Fusing while streaming a conversion equals Diffusers' ``load_lora_adapter`` + ``set_adapters`` +
  ``fuse_lora`` on the real model class (two LoRAs, strengths != 1) for Wan, CogVideoX and Sana.
* CogVideoX SAT LoRAs convert for any layer count (2 and 3 here), to the keys the official
  exporter's string rules give, and back to SAT bit for bit.
* Bad LoRAs fail with one line naming the offending keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from weightsmith.convert.engine import make_plan
from weightsmith.errors import ConversionError, InputError, UsageError, WeightsmithError
from weightsmith.families import get_component
from weightsmith.io import open_checkpoint
from weightsmith.io.writers import write_sat
from weightsmith.lora import (
    convert_lora,
    fuse,
    fused_stream,
    lora_from_state_dict,
    parse_lora_option,
    read_lora,
)
from weightsmith.lora.cli import lora_command, resolve_lora_options
from weightsmith.tiny import Fixture, save_fixture

WAN_DIM, WAN_FFN, WAN_LAYERS = 24, 32, 2  # the tiny Wan transformer (2 heads x 12, 2 layers)
WAN_ATTN = ("to_q", "to_k", "to_v", "to_out.0")
WAN_ORIG = {
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "o",
    "attn1": "self_attn",
    "attn2": "cross_attn",
}
SAT = "model.diffusion_model."
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * 0.05


def wan_modules() -> list[tuple[str, int, int]]:
    """(diffusers module, in, out) of every Linear a Wan LoRA usually trains."""
    mods = []
    for i in range(WAN_LAYERS):
        for attn in ("attn1", "attn2"):
            mods += [(f"blocks.{i}.{attn}.{m}", WAN_DIM, WAN_DIM) for m in WAN_ATTN]
        mods += [
            (f"blocks.{i}.ffn.net.0.proj", WAN_DIM, WAN_FFN),
            (f"blocks.{i}.ffn.net.2", WAN_FFN, WAN_DIM),
        ]
    return mods


def wan_peft(seed: int, rank: int = 4, bias: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for j, (m, fin, fout) in enumerate(wan_modules()):
        r = rank + (j % 2)  # mixed ranks
        sd[f"transformer.{m}.lora_A.weight"] = _randn(gen, r, fin)
        sd[f"transformer.{m}.lora_B.weight"] = _randn(gen, fout, r)
        if bias and j % 3 == 0:
            sd[f"transformer.{m}.lora_B.bias"] = _randn(gen, fout)
    return sd


def wan_native(module: str) -> str:
    """Wan original name of a test module, written out independently of weightsmith's tables."""
    parts = module.split(".")
    if parts[2] == "ffn":
        return f"blocks.{parts[1]}.ffn.{'0' if parts[4] == '0' else '2'}"
    return f"blocks.{parts[1]}.{WAN_ORIG[parts[2]]}.{WAN_ORIG['.'.join(parts[3:])]}"


def wan_original(seed: int, alphas: tuple[float, ...] = (3.0, 4.0), rank: int = 8) -> dict[str, torch.Tensor]:
    """A ComfyUI-style Wan LoRA: lora_down/lora_up, alpha != rank, some diff_b, zero norm diffs."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for j, (m, fin, fout) in enumerate(wan_modules()):
        key = "diffusion_model." + wan_native(m)
        sd[f"{key}.lora_down.weight"] = _randn(gen, rank, fin)
        sd[f"{key}.lora_up.weight"] = _randn(gen, fout, rank)
        sd[f"{key}.alpha"] = torch.tensor(alphas[j % len(alphas)], dtype=torch.bfloat16)
        if j % 4 == 1:
            sd[f"{key}.diff_b"] = _randn(gen, fout)
    for i in range(WAN_LAYERS):  # what trainers store for norms: all zero
        sd[f"diffusion_model.blocks.{i}.norm3.diff"] = torch.zeros(WAN_DIM)
        sd[f"diffusion_model.blocks.{i}.norm3.diff_b"] = torch.zeros(WAN_DIM)
    return sd


def effective(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """PEFT state dict -> {module: B @ A} (and biases), the quantity a loader adds at scale 1."""
    out = {}
    for k, a in sd.items():
        if k.endswith(".lora_A.weight"):
            m = k[: -len(".lora_A.weight")]
            b = sd[m + ".lora_B.weight"]
            out[m] = b.double().flatten(1) @ a.double().flatten(1)
        elif k.endswith(".lora_B.bias"):
            out[k] = sd[k].double()
    return out


def assert_close_rel(
    ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], rel: float = 1e-6
) -> None:
    assert set(ours) == set(theirs)
    for k in ours:
        a, b = ours[k].double(), theirs[k].double()
        assert a.shape == b.shape, k
        scale = max(b.abs().max().item(), 1e-12)
        assert (a - b).abs().max().item() <= rel * scale, k


def diffusers_fused(model: torch.nn.Module, loras: list[tuple[dict, float]]) -> dict[str, torch.Tensor]:
    """Diffusers' own path, no pipeline: load_lora_adapter per LoRA, set strengths, fuse_lora, unload."""
    names = []
    for n, (sd, _) in enumerate(loras):
        model.load_lora_adapter(dict(sd), adapter_name=f"l{n}", prefix="transformer")
        names.append(f"l{n}")
    model.set_adapters(names, [s for _, s in loras])
    model.fuse_lora(adapter_names=names)
    model.unload_lora()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fused_output(
    base: Path, loras: list[tuple[object, float]], dtype: str = "keep"
) -> dict[str, torch.Tensor]:
    ck = open_checkpoint(base)
    try:
        plan = make_plan(ck, "diffusers", dtype=dtype)
        return dict(fused_stream(plan, loras))
    finally:
        ck.close()


@pytest.fixture(scope="module")
def wan_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wan")
    return save_fixture(Fixture("wan", "transformer", "2.1-t2v", "original", "safetensors"), folder)


# --------------------------------------------------------------------------------------- Wan
def test_wan_peft_original_round_trip_is_bit_identical(tmp_path: Path) -> None:
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    peft = wan_peft(1, bias=True)
    save_file(peft, tmp_path / "in.safetensors")
    lines = convert_lora(tmp_path / "in.safetensors", tmp_path / "comfy.safetensors", "original")
    assert lines[-1] == str(tmp_path / "comfy.safetensors")
    comfy = load_file(tmp_path / "comfy.safetensors")
    for m, _, _ in wan_modules():
        key = "diffusion_model." + wan_native(m)
        assert torch.equal(comfy[f"{key}.lora_down.weight"], peft[f"transformer.{m}.lora_A.weight"])
        assert comfy[f"{key}.alpha"].item() == peft[f"transformer.{m}.lora_A.weight"].shape[0]  # scale 1
    assert torch.equal(
        comfy["diffusion_model.blocks.0.self_attn.q.diff_b"],
        peft["transformer.blocks.0.attn1.to_q.lora_B.bias"],
    )
    convert_lora(tmp_path / "comfy.safetensors", tmp_path / "peft", "diffusers")
    back = load_file(tmp_path / "peft" / "pytorch_lora_weights.safetensors")
    assert set(back) == set(peft)
    assert all(torch.equal(back[k], peft[k]) and back[k].dtype == peft[k].dtype for k in peft)
    # An independent consumer: Diffusers' own converter reads our original-format file the same way.
    theirs = _convert_non_diffusers_wan_lora_to_diffusers(dict(comfy))
    assert set(theirs) == set(back)
    assert all(torch.equal(theirs[k], back[k]) for k in back)


def test_wan_original_with_alpha_matches_diffusers_converter(tmp_path: Path) -> None:
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    comfy = wan_original(2)
    save_file(comfy, tmp_path / "comfy.safetensors")
    lines = convert_lora(tmp_path / "comfy.safetensors", tmp_path / "out.safetensors", "diffusers")
    text = "\n".join(lines)
    assert "all-zero diffs" in text and "folded into lora_A" in text
    ours = load_file(tmp_path / "out.safetensors")
    theirs = _convert_non_diffusers_wan_lora_to_diffusers(dict(comfy))
    assert set(ours) == set(theirs)
    assert_close_rel(effective(ours), effective(theirs))
    # Alpha 4 over rank 8 is a power of two: the folded tensors are exact.
    assert torch.equal(
        ours["transformer.blocks.0.attn1.to_k.lora_A.weight"],
        comfy["diffusion_model.blocks.0.self_attn.k.lora_down.weight"] * 0.5,
    )


def test_wan_musubi_reads_like_diffusers(tmp_path: Path) -> None:
    from diffusers.loaders.lora_conversion_utils import _convert_musubi_wan_lora_to_diffusers

    comfy = wan_original(3, alphas=(2.0, 5.0))
    musubi = {}
    for k, v in comfy.items():
        body = k.removeprefix("diffusion_model.")
        for suffix in (".lora_down.weight", ".lora_up.weight", ".alpha"):
            if body.endswith(suffix) and "norm3" not in body:
                musubi["lora_unet_" + body[: -len(suffix)].replace(".", "_") + suffix] = v
    save_file(musubi, tmp_path / "musubi.safetensors")
    lora = read_lora(tmp_path / "musubi.safetensors")
    assert (lora.family, lora.format) == ("wan", "wan-musubi")
    convert_lora(tmp_path / "musubi.safetensors", tmp_path / "out.safetensors", "diffusers")
    ours = load_file(tmp_path / "out.safetensors")
    theirs = _convert_musubi_wan_lora_to_diffusers(dict(musubi))
    theirs = {k if k.startswith("transformer.") else f"transformer.{k}": v for k, v in theirs.items()}
    assert_close_rel(effective(ours), effective(theirs))


def test_wan_fused_stream_matches_diffusers_fuse_lora(tmp_path: Path, wan_base: Path) -> None:
    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

    peft = wan_peft(4, bias=True)
    save_file(peft, tmp_path / "a.safetensors")
    save_file(wan_original(5), tmp_path / "b.safetensors")
    loras = [(tmp_path / "a.safetensors", 0.7), (tmp_path / "b.safetensors", -1.3)]
    ours = fused_output(wan_base, loras)

    model = get_component("wan", "transformer").tiny_model("2.1-t2v", 0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    theirs_b = WanLoraLoaderMixin.lora_state_dict(str(tmp_path / "b.safetensors"))  # Diffusers reads ComfyUI
    theirs = diffusers_fused(model, [(peft, 0.7), (theirs_b, -1.3)])
    assert_close_rel(ours, theirs)
    changed = [k for k in ours if not torch.equal(ours[k], base[k])]
    assert "blocks.1.ffn.net.2.weight" in changed and "blocks.0.attn1.to_q.bias" in changed
    assert not any("norm" in k or "scale_shift" in k for k in changed)

    # A cast conversion rounds the fused value once: fuse in float32, then bf16.
    bf16 = fused_output(wan_base, loras, dtype="bf16")
    assert all(torch.equal(bf16[k], ours[k].to(torch.bfloat16)) for k in ours)


def test_peft_alpha_metadata_is_honoured_like_diffusers(tmp_path: Path, wan_base: Path) -> None:
    """Diffusers' trainers store lora_alpha in the safetensors metadata; it sets the scale."""
    import json

    from diffusers.loaders.lora_pipeline import WanLoraLoaderMixin

    gen = torch.Generator().manual_seed(22)
    sd = {}
    for m, fin, fout in wan_modules():
        sd[f"transformer.{m}.lora_A.weight"] = _randn(gen, 4, fin)
        sd[f"transformer.{m}.lora_B.weight"] = _randn(gen, fout, 4)
    for m in ("blocks.0.attn1.to_q", "blocks.1.ffn.net.2"):  # PEFT scales lora_B.bias by alpha/r too
        sd[f"transformer.{m}.lora_B.bias"] = _randn(gen, WAN_DIM)
    config = {
        "r": 4,
        "lora_alpha": 2,
        "alpha_pattern": {"blocks.1.ffn.net.2": 12},
        "rank_pattern": {},
        "lora_bias": True,
        "target_modules": sorted(m for m, _, _ in wan_modules()),
    }
    meta = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in config.items()}),
    }
    save_file(sd, tmp_path / "meta.safetensors", metadata=meta)
    lora = read_lora(tmp_path / "meta.safetensors")
    scales = {m.module: m.scale for m in lora.modules}
    assert scales["blocks.0.attn1.to_q"] == 0.5 and scales["blocks.1.ffn.net.2"] == 3.0
    ours = fused_output(wan_base, [(tmp_path / "meta.safetensors", 0.9)])
    model = get_component("wan", "transformer").tiny_model("2.1-t2v", 0)
    state, metadata = WanLoraLoaderMixin.lora_state_dict(
        str(tmp_path / "meta.safetensors"), return_lora_metadata=True
    )
    model.load_lora_adapter(state, adapter_name="m", prefix="transformer", metadata=metadata)
    model.set_adapters(["m"], [0.9])
    model.fuse_lora(adapter_names=["m"])
    model.unload_lora()
    assert_close_rel(ours, dict(model.state_dict()))
    # Written back as PEFT without metadata, the scales are folded in: same fused model.
    convert_lora(tmp_path / "meta.safetensors", tmp_path / "plain.safetensors", "diffusers")
    assert_close_rel(fused_output(wan_base, [(tmp_path / "plain.safetensors", 0.9)]), ours)


def test_attention_only_lora_fits_cogvideox_and_sana(tmp_path: Path) -> None:
    sd = {
        "transformer.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(2, 16),
        "transformer.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(16, 2),
    }
    lora = lora_from_state_dict(sd)
    assert lora.family is None and set(lora.candidates) == {"cogvideox", "sana"}
    assert lora_from_state_dict(sd, family="sana").family == "sana"
    save_file(sd, tmp_path / "q.safetensors")
    convert_lora(tmp_path / "q.safetensors", tmp_path / "q_sat", "sat")  # --to sat implies CogVideoX
    module = torch.load(tmp_path / "q_sat" / "1" / "mp_rank_00_model_states.pt", weights_only=True)["module"]
    qkv = f"{SAT}transformer.layers.0.attention.query_key_value"
    assert sorted(module) == sorted(f"{qkv}.matrix_{ab}.{j}" for ab in "AB" for j in range(3))
    assert torch.equal(module[f"{qkv}.matrix_A.0"], torch.full((2, 16), 2.0))  # scale 1 = lora_alpha 1 / r 2
    assert not module[f"{qkv}.matrix_B.1"].any()  # to_k untouched: zero partition
    with pytest.raises(ConversionError, match="wan"):
        lora_from_state_dict(sd, family="wan")


def test_fuse_rounds_once_in_float32() -> None:
    gen = torch.Generator().manual_seed(0)
    from weightsmith.lora import LoraModule

    w = _randn(gen, 6, 5).to(torch.bfloat16)
    m = LoraModule("x", _randn(gen, 2, 5), _randn(gen, 6, 2), alpha=1.0, diff=_randn(gen, 6, 5))
    got = fuse(w, [(m, 2.0)])
    want = (w.float() + 2.0 * (0.5 * (m.up @ m.down) + m.diff)).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)


# ---------------------------------------------------------------------------------- CogVideoX
def cog_model(num_layers: int, seed: int = 0) -> torch.nn.Module:
    import diffusers

    from weightsmith.families.cogvideox import tiny_transformer_config

    model = diffusers.CogVideoXTransformer3DModel(
        **{**tiny_transformer_config("5b"), "num_layers": num_layers}
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.copy_(_randn(gen, *p.shape))
    return model.eval()


def sat_lora(num_layers: int, hidden: int, rank: int, seed: int) -> dict[str, torch.Tensor]:
    """SAT LoraMixin keys: qkv with three partitions, dense with one (layouts.md 2.8)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(num_layers):
        layer = f"{SAT}transformer.layers.{i}.attention"
        for j in range(3):
            sd[f"{layer}.query_key_value.matrix_A.{j}"] = _randn(gen, rank, hidden)
            sd[f"{layer}.query_key_value.matrix_B.{j}"] = _randn(gen, hidden, rank)
        sd[f"{layer}.dense.matrix_A.0"] = _randn(gen, rank, hidden)
        sd[f"{layer}.dense.matrix_B.0"] = _randn(gen, hidden, rank)
        # A LoRA-trained SAT checkpoint keeps the base weights beside the LoRA; they are ignored.
        sd[f"{layer}.query_key_value.original.weight"] = _randn(gen, 3 * hidden, hidden)
    return sd


def exporter_key(sat_key: str) -> str:
    """CogVideo's tools/export_sat_lora_weight.py string rules (layouts.md 2.8), written out here."""
    table = {
        "attention.query_key_value.matrix_A.0": "attn1.to_q.lora_A.weight",
        "attention.query_key_value.matrix_A.1": "attn1.to_k.lora_A.weight",
        "attention.query_key_value.matrix_A.2": "attn1.to_v.lora_A.weight",
        "attention.query_key_value.matrix_B.0": "attn1.to_q.lora_B.weight",
        "attention.query_key_value.matrix_B.1": "attn1.to_k.lora_B.weight",
        "attention.query_key_value.matrix_B.2": "attn1.to_v.lora_B.weight",
        "attention.dense.matrix_A.0": "attn1.to_out.0.lora_A.weight",
        "attention.dense.matrix_B.0": "attn1.to_out.0.lora_B.weight",
    }
    key = sat_key[len(SAT) :]
    for old, new in table.items():
        if key.endswith(old):
            key = key[: -len(old)] + new
    return key.replace("layers", "transformer_blocks")


@pytest.mark.parametrize("num_layers", [2, 3])
def test_cogvideox_sat_lora_any_layer_count(tmp_path: Path, num_layers: int) -> None:
    hidden, rank, strength = 16, 4, 0.8
    model = cog_model(num_layers)
    model.save_pretrained(str(tmp_path / "base"))
    from weightsmith.convert.run import convert

    convert(tmp_path / "base", tmp_path / "base_sat", "sat", progress=False)  # base in SAT layout too

    sat = sat_lora(num_layers, hidden, rank, seed=7)
    items = sorted(sat.items())
    write_sat(tmp_path / "lora_sat", [(k, tuple(v.shape), v.dtype) for k, v in items], iter(items))
    lines = convert_lora(tmp_path / "lora_sat", tmp_path / "lora_peft", "diffusers")
    assert any("non-LoRA tensors" in line for line in lines)
    peft = load_file(tmp_path / "lora_peft" / "pytorch_lora_weights.safetensors")
    lora_keys = [k for k in sat if ".matrix_" in k]
    assert len(peft) == 8 * num_layers
    assert set(peft) == {exporter_key(k) for k in lora_keys}
    for k in lora_keys:  # SAT scales by 1/r (lora_alpha 1); r = 4 folds exactly into lora_A
        want = sat[k] / rank if ".matrix_A." in k else sat[k]
        assert torch.equal(peft[exporter_key(k)], want), k

    # Fused from the SAT base and the SAT LoRA directly == Diffusers fusing our PEFT file.
    second = {
        f"transformer.transformer_blocks.{i}.ff.net.0.proj.lora_A.weight": torch.full(
            (2, hidden), 0.01 * (i + 1)
        )
        for i in range(num_layers)
    }
    gen = torch.Generator().manual_seed(9)
    ff_out = model.transformer_blocks[0].ff.net[0].proj.weight.shape[0]
    second |= {
        f"transformer.transformer_blocks.{i}.ff.net.0.proj.lora_B.weight": _randn(gen, ff_out, 2)
        for i in range(num_layers)
    }
    save_file(second, tmp_path / "ff.safetensors")
    ours = fused_output(
        tmp_path / "base_sat", [(tmp_path / "lora_sat", strength), (tmp_path / "ff.safetensors", -0.5)]
    )
    base = {k: v.clone() for k, v in model.state_dict().items()}
    theirs = diffusers_fused(model, [(peft, strength), (second, -0.5)])
    assert_close_rel(ours, theirs)
    # And by hand, from the SAT tensors: partition j of query_key_value is to_q/to_k/to_v.
    for i in range(num_layers):
        for j, m in enumerate(("to_q", "to_k", "to_v")):
            a = sat[f"{SAT}transformer.layers.{i}.attention.query_key_value.matrix_A.{j}"]
            b = sat[f"{SAT}transformer.layers.{i}.attention.query_key_value.matrix_B.{j}"]
            want = base[f"transformer_blocks.{i}.attn1.{m}.weight"] + strength / rank * (b @ a)
            assert_close_rel({"w": ours[f"transformer_blocks.{i}.attn1.{m}.weight"]}, {"w": want})

    # PEFT -> SAT gives the SAT LoRA back bit for bit (rank 4: the 1/r folding is exact).
    convert_lora(tmp_path / "lora_peft", tmp_path / "again.pt", "sat")
    again = torch.load(tmp_path / "again.pt", weights_only=True)["module"]
    assert set(again) == set(lora_keys)
    assert all(torch.equal(again[k], sat[k]) for k in lora_keys)


def test_cogvideox_single_partition_qkv_lora_is_cut_like_the_weight() -> None:
    """A SAT LoRA over the whole fused qkv (one partition) maps its up rows to to_q/to_k/to_v."""
    gen = torch.Generator().manual_seed(3)
    a, b = _randn(gen, 2, 16), _randn(gen, 48, 2)
    lora = lora_from_state_dict(
        {
            f"{SAT}transformer.layers.0.attention.query_key_value.matrix_A.0": a,
            f"{SAT}transformer.layers.0.attention.query_key_value.matrix_B.0": b,
        }
    )
    got = {m.module: m for m in lora.modules}
    for j, name in enumerate(("to_q", "to_k", "to_v")):
        m = got[f"transformer_blocks.0.attn1.{name}"]
        assert torch.equal(m.down, a) and torch.equal(m.up, b[16 * j : 16 * (j + 1)]) and m.scale == 0.5


# --------------------------------------------------------------------------------------- Sana
def test_sana_fused_stream_matches_diffusers(tmp_path: Path) -> None:
    base_path = save_fixture(Fixture("sana", "transformer", "1.0", "original", "safetensors"), tmp_path)
    gen = torch.Generator().manual_seed(11)
    sd = {}
    for attn in ("attn1", "attn2"):
        for m in WAN_ATTN:
            sd[f"transformer.transformer_blocks.0.{attn}.{m}.lora_A.weight"] = _randn(gen, 3, 8)
            sd[f"transformer.transformer_blocks.0.{attn}.{m}.lora_B.weight"] = _randn(gen, 8, 3)
    sd["transformer.transformer_blocks.0.ff.conv_inverted.lora_A.weight"] = _randn(gen, 3, 8, 1, 1)
    sd["transformer.transformer_blocks.0.ff.conv_inverted.lora_B.weight"] = _randn(gen, 40, 3, 1, 1)
    save_file(sd, tmp_path / "sana.safetensors")
    assert read_lora(tmp_path / "sana.safetensors").family == "sana"
    ours = fused_output(base_path, [(tmp_path / "sana.safetensors", 1.5)])
    model = get_component("sana", "transformer").tiny_model("1.0", 0)
    theirs = diffusers_fused(model, [(sd, 1.5)])
    assert_close_rel(ours, theirs)


# ----------------------------------------------------------------------------------- bad input
def one_line(e: pytest.ExceptionInfo[WeightsmithError]) -> str:
    text = e.value.one_line()
    assert "\n" not in str(e.value)
    return text


def test_lora_for_another_family_or_size_is_refused(tmp_path: Path, wan_base: Path) -> None:
    wan = wan_peft(12)
    save_file(wan, tmp_path / "wan.safetensors")
    cog = save_fixture(Fixture("cogvideox", "transformer", "5b", "diffusers", "diffusers-folder"), tmp_path)
    with pytest.raises(ConversionError) as e:
        fused_output(cog, [(tmp_path / "wan.safetensors", 1.0)])
    assert "cogvideox" in one_line(e) and "blocks.0.attn1.to_q" in one_line(e)

    deeper = dict(wan)
    deeper["transformer.blocks.7.attn1.to_q.lora_A.weight"] = torch.zeros(4, WAN_DIM)
    deeper["transformer.blocks.7.attn1.to_q.lora_B.weight"] = torch.zeros(WAN_DIM, 4)
    save_file(deeper, tmp_path / "deeper.safetensors")
    with pytest.raises(ConversionError) as e:
        fused_output(wan_base, [(tmp_path / "deeper.safetensors", 1.0)])
    assert "'blocks.7.attn1.to_q.weight'" in one_line(e) and "not in the base model" in one_line(e)

    wide = {k: torch.cat([v, v], dim=-1) if k.endswith("lora_A.weight") else v for k, v in wan.items()}
    save_file(wide, tmp_path / "wide.safetensors")
    with pytest.raises(ConversionError, match="do not fit"):
        fused_output(wan_base, [(tmp_path / "wide.safetensors", 1.0)])


def test_broken_lora_files_give_one_line_errors(tmp_path: Path, wan_base: Path) -> None:
    bad_rank = wan_peft(13)
    bad_rank["transformer.blocks.0.attn1.to_q.lora_B.weight"] = torch.zeros(WAN_DIM, 3)
    with pytest.raises(ConversionError) as e:
        lora_from_state_dict(bad_rank, source="r.safetensors")
    assert "rank 4" in one_line(e) and "rank 3" in one_line(e) and "blocks.0.attn1.to_q" in one_line(e)

    junk = wan_peft(14) | {"transformer.blocks.0.attn1.to_q.mystery": torch.zeros(2)}
    with pytest.raises(ConversionError, match="mystery"):
        lora_from_state_dict(junk)
    with pytest.raises(ConversionError, match="no CogVideoX, Wan or Sana"):
        lora_from_state_dict(
            {
                "transformer.foo.bar.lora_A.weight": torch.zeros(1, 2),
                "transformer.foo.bar.lora_B.weight": torch.zeros(2, 1),
            }
        )
    with pytest.raises(ConversionError, match="DoRA"):
        lora_from_state_dict(
            wan_peft(15) | {"transformer.blocks.0.attn1.to_q.lora_magnitude_vector": torch.ones(24)}
        )
    with pytest.raises(WeightsmithError):  # a base checkpoint is not a LoRA
        read_lora(wan_base)
    with pytest.raises(InputError):
        read_lora(tmp_path / "missing.safetensors")

    save_file(wan_peft(16), tmp_path / "w.safetensors")
    with pytest.raises(UsageError, match="CogVideoX"):
        convert_lora(tmp_path / "w.safetensors", tmp_path / "w.pt", "sat")
    cog = {
        "transformer.transformer_blocks.0.ff.net.2.lora_A.weight": torch.zeros(2, 64),
        "transformer.transformer_blocks.0.ff.net.2.lora_B.weight": torch.zeros(16, 2),
    }
    save_file(cog, tmp_path / "c.safetensors")
    with pytest.raises(UsageError, match="Wan"):
        convert_lora(tmp_path / "c.safetensors", tmp_path / "c2.safetensors", "original")
    ck = open_checkpoint(wan_base)
    with pytest.raises(UsageError, match="Diffusers-layout"):
        fused_stream(make_plan(ck, "original"), [(tmp_path / "w.safetensors", 1.0)])
    ck.close()


def test_nonzero_diffs_need_fusing_or_drop_diffs(tmp_path: Path) -> None:
    comfy = wan_original(17)
    comfy["diffusion_model.blocks.0.norm3.diff"] = torch.full((WAN_DIM,), 0.1)
    save_file(comfy, tmp_path / "d.safetensors")
    with pytest.raises(ConversionError, match="drop-diffs"):
        convert_lora(tmp_path / "d.safetensors", tmp_path / "o.safetensors", "diffusers")
    assert not (tmp_path / "o.safetensors").exists()
    lines = convert_lora(tmp_path / "d.safetensors", tmp_path / "o.safetensors", "diffusers", drop_diffs=True)
    assert any("DROPPED 1" in line for line in lines)
    # The original format keeps it, and fusing applies it.
    convert_lora(tmp_path / "d.safetensors", tmp_path / "o2.safetensors", "original")
    assert torch.equal(
        load_file(tmp_path / "o2.safetensors")["diffusion_model.blocks.0.norm3.diff"],
        comfy["diffusion_model.blocks.0.norm3.diff"],
    )


def test_linear_weight_diff_goes_to_peft_exactly(tmp_path: Path, wan_base: Path) -> None:
    """A head.head full diff (lightx2v-style) becomes an identity-factor PEFT pair, as Diffusers reads it."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    gen = torch.Generator().manual_seed(21)
    comfy = wan_original(20)
    comfy["diffusion_model.head.head.diff"] = _randn(gen, 64, WAN_DIM)
    comfy["diffusion_model.head.head.diff_b"] = _randn(gen, 64)
    save_file(comfy, tmp_path / "h.safetensors")
    lines = convert_lora(tmp_path / "h.safetensors", tmp_path / "h_peft.safetensors", "diffusers")
    assert any("identity-factor" in line for line in lines)
    ours = load_file(tmp_path / "h_peft.safetensors")
    eff = effective(ours)
    assert torch.equal(eff["transformer.proj_out"], comfy["diffusion_model.head.head.diff"].double())
    assert_close_rel(eff, effective(_convert_non_diffusers_wan_lora_to_diffusers(dict(comfy))))
    # Fusing the original file and fusing the PEFT file give the same model.
    a = fused_output(wan_base, [(tmp_path / "h.safetensors", 0.6)])
    b = fused_output(wan_base, [(tmp_path / "h_peft.safetensors", 0.6)])
    assert_close_rel(a, b)


def test_parse_lora_option() -> None:
    assert parse_lora_option("a.safetensors:0.5") == ("a.safetensors", 0.5)
    assert parse_lora_option("a.safetensors", 0.8) == ("a.safetensors", 0.8)
    assert parse_lora_option("dir:with:colon/a.safetensors") == ("dir:with:colon/a.safetensors", 1.0)
    assert parse_lora_option("a.safetensors:-1e-1") == ("a.safetensors", -0.1)
    assert resolve_lora_options(["x:2", "y"], 0.3) == [("x", 2.0), ("y", 0.3)]
    with pytest.raises(UsageError):
        parse_lora_option("a.safetensors:inf")


def test_lora_cli_convert_and_help(tmp_path: Path) -> None:
    save_file(wan_peft(18), tmp_path / "in.safetensors")
    runner = CliRunner()
    res = runner.invoke(
        lora_command,
        ["convert", str(tmp_path / "in.safetensors"), str(tmp_path / "c.safetensors"), "--to", "original"],
    )
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "c.safetensors") in res.output
    res = runner.invoke(lora_command, ["inspect", str(tmp_path / "c.safetensors"), "--json"])
    assert res.exit_code == 0 and '"format": "wan-original"' in res.output
    res = runner.invoke(lora_command, ["--help"])
    assert "wan-musubi" in res.output and "cogvideox-sat" in res.output
    res = runner.invoke(lora_command, ["convert", "--help"])
    assert "--sat-alpha" in res.output and "pytorch_lora_weights.safetensors" in res.output
