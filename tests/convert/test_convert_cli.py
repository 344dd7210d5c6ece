"""`weightsmith convert` end to end: every registered component, variant and layout round-trips
bit for bit through the real containers, Diffusers output loads with from_pretrained, and bad
input leaves no output."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from weightsmith.families import components, get_component
from weightsmith.io import open_single
from weightsmith.tiny import Fixture, save_fixture

CASES = [
    (c.family, c.component, v, layout)
    for c in components()
    for v in c.variants
    for layout in c.layouts
    if layout != "diffusers"
]


def _dst_for(tmp_path, family, component, layout):
    if layout == "sat":
        return tmp_path / ("sat" if component == "transformer" else "3d-vae.pt")
    return tmp_path / "original.safetensors"


def _assert_same(a, b, exact=True):
    x, y = open_single(a), open_single(b)
    assert sorted(x.keys()) == sorted(y.keys())
    for k in x:
        tx, ty = x.get(k), y.get(k)
        assert tx.dtype == ty.dtype, k
        if exact:
            assert torch.equal(tx, ty), k
        else:  # a layout inexact by convention (Component.inexact_layouts): float32 rounding at most
            torch.testing.assert_close(ty, tx, rtol=0, atol=float(torch.finfo(torch.float32).eps) * 4)


@pytest.mark.parametrize(
    ("family", "component", "variant", "layout"), CASES, ids=["-".join(c) for c in CASES]
)
def test_round_trip_through_cli(tmp_path, run_cli, family, component, variant, layout):
    src = save_fixture(Fixture(family, component, variant, "diffusers", "diffusers-folder"), tmp_path)
    mid = _dst_for(tmp_path, family, component, layout)
    r = run_cli("convert", src, mid, "--to", layout)
    assert r.code == 0, r.err
    r = run_cli("convert", mid, tmp_path / "back", "--to", "diffusers", "--shard-size", "20KB")
    assert r.code == 0, r.err
    comp = get_component(family, component)
    exact = layout not in comp.inexact_layouts
    _assert_same(src, tmp_path / "back", exact)
    # The Diffusers output is a loadable component folder equal to the source model.
    cls = comp.model_class(variant)
    model = cls.from_pretrained(str(tmp_path / "back"))
    ref = cls.from_pretrained(str(src))
    for (k, v), (k2, v2) in zip(sorted(model.state_dict().items()), sorted(ref.state_dict().items())):
        assert k == k2, k
        if exact:
            assert torch.equal(v, v2), k
        else:
            torch.testing.assert_close(v, v2, rtol=0, atol=float(torch.finfo(torch.float32).eps) * 4)


def test_summary_names_what_was_done(tmp_path, run_cli):
    src = save_fixture(Fixture("cogvideox", "transformer", "5b", "diffusers", "diffusers-folder"), tmp_path)
    r = run_cli("convert", src, tmp_path / "sat", "--to", "sat")
    assert r.code == 0, r.err
    assert "fused" in r.words and "renamed" in r.words
    assert r.out.strip() == str(tmp_path / "sat")


def test_dtype_cast_while_streaming(tmp_path, run_cli):
    src = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), tmp_path)
    r = run_cli("convert", src, tmp_path / "w.safetensors", "--to", "original", "--dtype", "bf16")
    assert r.code == 0, r.err
    out = load_file(str(tmp_path / "w.safetensors"))
    assert {v.dtype for v in out.values()} == {torch.bfloat16}
    ref = open_single(src)
    assert torch.equal(
        out["blocks.0.self_attn.q.weight"], ref.get("blocks.0.attn1.to_q.weight").to(torch.bfloat16)
    )


def test_prefix_for_comfyui(tmp_path, run_cli):
    src = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), tmp_path)
    r = run_cli(
        "convert", src, tmp_path / "w.safetensors", "--to", "original", "--prefix", "model.diffusion_model."
    )
    assert r.code == 0, r.err
    keys = load_file(str(tmp_path / "w.safetensors")).keys()
    assert all(k.startswith("model.diffusion_model.") for k in keys)
    assert "model.diffusion_model.head.modulation" in keys


def test_wrong_family_forced(tmp_path, run_cli):
    src = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), tmp_path)
    r = run_cli("convert", src, tmp_path / "out", "--to", "diffusers", "--family", "sana")
    assert r.code == 2
    assert "not a sana checkpoint" in r.words and "wan" in r.words
    assert not (tmp_path / "out").exists()


def test_unexpected_key_is_named_and_nothing_written(tmp_path, run_cli):
    src = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "original", "safetensors"), tmp_path)
    state = load_file(str(src))
    state["blocks.0.self_attn.surprise.weight"] = torch.zeros(2)
    save_file(state, str(tmp_path / "odd.safetensors"))
    r = run_cli("convert", tmp_path / "odd.safetensors", tmp_path / "out", "--to", "diffusers")
    assert r.code == 2
    assert "blocks.0.self_attn.surprise.weight" in r.words
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_key_is_named(tmp_path, run_cli):
    src = save_fixture(Fixture("sana", "transformer", "1.0", "original", "safetensors"), tmp_path)
    state = load_file(str(src))
    del state["blocks.0.cross_attn.proj.weight"]
    save_file(state, str(tmp_path / "odd.safetensors"))
    r = run_cli("convert", tmp_path / "odd.safetensors", tmp_path / "out", "--to", "diffusers")
    assert r.code == 2
    assert "blocks.0.cross_attn.proj.weight" in r.words
    assert not (tmp_path / "out").exists()


def test_unknown_model(tmp_path, run_cli):
    save_file({"encoder.layer.0.weight": torch.zeros(2, 2)}, str(tmp_path / "bert.safetensors"))
    r = run_cli("convert", tmp_path / "bert.safetensors", tmp_path / "out", "--to", "diffusers")
    assert r.code == 2 and "match no known family" in r.words
    assert not (tmp_path / "out").exists()


def test_existing_destination(tmp_path, run_cli):
    src = save_fixture(Fixture("wan", "vae", "2.1", "diffusers", "diffusers-folder"), tmp_path)
    (tmp_path / "out.safetensors").write_text("mine")
    r = run_cli("convert", src, tmp_path / "out.safetensors", "--to", "original")
    assert r.code == 2 and "already exists" in r.words
    assert (tmp_path / "out.safetensors").read_text() == "mine"


def test_pipeline_folder_converts_every_component(tmp_path, run_cli):
    import shutil

    pipe = tmp_path / "pipe"
    # Wan 2.2 A14B: two experts (high noise: transformer, low noise: transformer_2) and a VAE.
    for comp, fx in {
        "transformer": Fixture("wan", "transformer", "2.2-i2v-a14b", "diffusers", "diffusers-folder"),
        "transformer_2": Fixture("wan", "transformer", "2.2-i2v-a14b", "diffusers", "diffusers-folder"),
        "vae": Fixture("wan", "vae", "2.1", "diffusers", "diffusers-folder"),
    }.items():
        shutil.copytree(save_fixture(fx, tmp_path / "build" / comp), pipe / comp)
    (pipe / "scheduler").mkdir()
    (pipe / "scheduler" / "scheduler_config.json").write_text("{}")
    index = {
        "_class_name": "WanImageToVideoPipeline",
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "boundary_ratio": 0.9,
    }
    (pipe / "model_index.json").write_text(json.dumps(index))
    r = run_cli("convert", pipe, tmp_path / "orig", "--to", "original")
    assert r.code == 0, r.err
    assert (tmp_path / "orig" / "scheduler" / "scheduler_config.json").is_file()
    r = run_cli(
        "convert",
        tmp_path / "orig" / "transformer" / "diffusion_pytorch_model.safetensors",
        tmp_path / "back",
        "--to",
        "diffusers",
    )
    assert r.code == 0, r.err
    _assert_same(pipe / "transformer", tmp_path / "back")
    orig2 = open_single(tmp_path / "orig" / "transformer_2" / "diffusion_pytorch_model.safetensors")
    assert "blocks.0.self_attn.q.weight" in orig2  # converted, not copied
    assert (tmp_path / "orig" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    r = run_cli("convert", tmp_path / "orig", tmp_path / "back-pipe", "--to", "diffusers")
    assert r.code == 0, r.err
    for comp in ("transformer", "transformer_2", "vae"):
        _assert_same(pipe / comp, tmp_path / "back-pipe" / comp)
    assert json.loads((tmp_path / "back-pipe" / "model_index.json").read_text())["boundary_ratio"] == 0.9


def _wan_lora(path, seed=0, rank=2):
    """A PEFT LoRA on every attention projection of the tiny Wan transformer."""
    src = open_single(
        save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), path)
    )
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k in src.keys():
        if ".attn1.to_" in k and k.endswith(".weight"):
            out_f, in_f = src.info(k).shape
            mod = k.removesuffix(".weight")
            state[f"transformer.{mod}.lora_A.weight"] = torch.randn(rank, in_f, generator=g) * 0.1
            state[f"transformer.{mod}.lora_B.weight"] = torch.randn(out_f, rank, generator=g) * 0.1
    save_file(state, str(path / "lora.safetensors"))
    return path / "lora.safetensors", state


def test_lora_fused_while_converting(tmp_path, run_cli):
    src = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), tmp_path)
    lora, state = _wan_lora(tmp_path)
    r = run_cli("convert", src, tmp_path / "fused", "--to", "diffusers", "--lora", f"{lora}:0.5")
    assert r.code == 0, r.err
    base, fused = open_single(src), open_single(tmp_path / "fused")
    key = "blocks.0.attn1.to_q.weight"
    delta = (
        state["transformer.blocks.0.attn1.to_q.lora_B.weight"]
        @ state["transformer.blocks.0.attn1.to_q.lora_A.weight"]
    )
    torch.testing.assert_close(fused.get(key), base.get(key) + 0.5 * delta, rtol=1e-6, atol=1e-7)
    assert torch.equal(
        fused.get("blocks.0.ffn.net.0.proj.weight"), base.get("blocks.0.ffn.net.0.proj.weight")
    )
    # Fusing into another layout goes through a temporary Diffusers folder and gives the same weights.
    r = run_cli("convert", src, tmp_path / "fused.safetensors", "--to", "original", "--lora", f"{lora}:0.5")
    assert r.code == 0, r.err
    orig = load_file(str(tmp_path / "fused.safetensors"))
    assert torch.equal(orig["blocks.0.self_attn.q.weight"], fused.get(key))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".fused")]


def test_pipeline_copy_refuses_special_files_and_follows_links(tmp_path, run_cli):
    import os
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(
        save_fixture(Fixture("wan", "vae", "2.1", "diffusers", "diffusers-folder"), tmp_path / "b"),
        pipe / "vae",
    )
    (pipe / "model_index.json").write_text(
        json.dumps({"_class_name": "WanPipeline", "vae": ["diffusers", "AutoencoderKLWan"]})
    )
    # A tokenizer file linked from elsewhere (as in Hugging Face's cache) is copied as a file.
    (tmp_path / "blob.json").write_text('{"a": 1}')
    (pipe / "tokenizer").mkdir()
    (pipe / "tokenizer" / "tokenizer.json").symlink_to(tmp_path / "blob.json")
    r = run_cli("convert", pipe, tmp_path / "out", "--to", "original")
    assert r.code == 0, r.err
    copied = tmp_path / "out" / "tokenizer" / "tokenizer.json"
    assert copied.is_file() and not copied.is_symlink() and copied.read_text() == '{"a": 1}'
    # A FIFO would hang the copy: refused in one line, nothing written.
    os.mkfifo(pipe / "tokenizer" / "pipe")
    r = run_cli("convert", pipe, tmp_path / "out2", "--to", "original")
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "FIFO" in r.words and "not a regular file or folder" in r.words
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2*"))
