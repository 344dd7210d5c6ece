"""A config that contradicts itself or the weights is refused (exit 2 naming key, value and what
the weights say), whether it is a folder's config.json, embedded in a file's metadata, or given
with --config; every tiny model's own config passes."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from weightsmith.families import components, get_component
from weightsmith.families.config_check import validate_config
from weightsmith.io import open_checkpoint
from weightsmith.tiny import Fixture, save_fixture, tiny_state

WAN = Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder")


def _exit_2(r, *words: str) -> None:
    assert r.code == 2, (r.code, r.err)
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    for w in words:
        assert w in r.words, r.err


def _config_text(cfg: dict) -> str:
    # json.dumps writes inf as Infinity, which no JSON reader takes; 1e999 is JSON that parses to inf.
    return json.dumps(cfg).replace("Infinity", "1e999")


def _edit_config(folder, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(_config_text(cfg))


# (key, value, words the message must hold)
LIES = [
    ("num_layers", 10**9, "num_layers is 1000000000"),
    ("num_layers", 3, "num_layers is 3 but the weights (wan transformer) say 2"),
    ("num_attention_heads", 0, "num_attention_heads is 0"),
    ("num_attention_heads", "abc", "num_attention_heads is 'abc', not int"),
    ("num_attention_heads", 2.5, "num_attention_heads is 2.5, not int"),
    ("num_attention_heads", True, "num_attention_heads is True, not int"),
    ("num_attention_heads", 3, "attention width of 24"),
    ("attention_head_dim", 16, "attention width of 24"),
    ("in_channels", 17, "in_channels is 17 but the weights (wan transformer) say"),
    ("out_channels", 5, "out_channels is 5 but the weights"),
    ("ffn_dim", 31, "ffn_dim is 31 but the weights"),
    ("patch_size", [1, 4, 4], "patch_size is [1, 4, 4] but the weights"),
    ("eps", 1e999, "eps is inf, not a finite number"),
    ("eps", -1.0, "eps is -1.0; an epsilon is between 0 and 1"),
    ("rope_max_seq_len", 1e999, "rope_max_seq_len is inf, not a finite number"),
    ("rope_max_seq_len", 10**12, "rope_max_seq_len is 1000000000000"),
    ("rope_max_seq_len", "long", "rope_max_seq_len is 'long', not int"),
    ("_class_name", "SanaTransformer2DModel", "SanaTransformer2DModel is a sana transformer class"),
    ("_class_name", "AutoencoderKLWan", "AutoencoderKLWan is a wan vae class"),
]


@pytest.mark.parametrize(("key", "value", "words"), LIES, ids=[f"{k}={v!r}"[:40] for k, v, _ in LIES])
def test_folder_config_json_that_lies(tmp_path, run_cli, key, value, words):
    src = save_fixture(WAN, tmp_path / "fx")
    _edit_config(src, **{key: value})
    r = run_cli("inspect", src)
    _exit_2(r, words)
    r = run_cli("convert", src, tmp_path / "out", "--to", "original")
    _exit_2(r, words)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("key", "value", "words"), LIES[:4] + LIES[6:7] + LIES[-2:-1])
def test_config_option_that_lies(tmp_path, run_cli, key, value, words):
    src = save_fixture(WAN, tmp_path / "fx")
    cfg = json.loads((src / "config.json").read_text())
    cfg[key] = value
    given = tmp_path / "given.json"
    given.write_text(_config_text(cfg))
    r = run_cli("convert", src / "diffusion_pytorch_model.safetensors", tmp_path / "o.safetensors",
                "--to", "original", "--config", given)  # fmt: skip
    _exit_2(r, words)
    assert not (tmp_path / "o.safetensors").exists()


def test_sana_config_for_wan_weights(tmp_path, run_cli):
    src = save_fixture(WAN, tmp_path / "fx")
    _, sana_cfg = tiny_state(
        "sana", "transformer", get_component("sana", "transformer").variants[0], "diffusers"
    )
    given = tmp_path / "sana.json"
    given.write_text(json.dumps({"_class_name": "SanaTransformer2DModel", **sana_cfg}))
    r = run_cli("convert", src / "diffusion_pytorch_model.safetensors", tmp_path / "o.safetensors",
                "--to", "original", "--config", given)  # fmt: skip
    _exit_2(r, "is a sana transformer class", "the weights are a wan transformer")


def test_embedded_config_that_lies(tmp_path, run_cli):
    src = save_fixture(WAN, tmp_path / "fx")
    orig = tmp_path / "orig.safetensors"
    assert run_cli("convert", src, orig, "--to", "original").code == 0
    tensors = load_file(str(orig))
    from safetensors import safe_open

    with safe_open(str(orig), framework="pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["weightsmith.diffusers_config"])
    cfg["num_layers"] = 7
    meta["weightsmith.diffusers_config"] = json.dumps(cfg)
    save_file(tensors, str(orig), metadata=meta)
    r = run_cli("inspect", orig)
    _exit_2(r, "weightsmith.diffusers_config", "num_layers is 7 but the weights (wan transformer) say 2")
    r = run_cli("convert", orig, tmp_path / "back", "--to", "diffusers")
    _exit_2(r, "num_layers is 7")
    assert not (tmp_path / "back").exists()


def test_nothing_copied_when_refused(tmp_path, run_cli):
    """The refused value never reaches an output config.json (the issue's 'copied into outputs')."""
    src = save_fixture(WAN, tmp_path / "fx")
    _edit_config(src, rope_max_seq_len=10**9)
    assert run_cli("convert", src, tmp_path / "o", "--to", "original").code == 2
    assert not (tmp_path / "o").exists()


def test_lazy_check_reads_one_shard(tmp_path):
    """Opening a folder to read one tensor does not read every shard's header for the config check."""
    fx = Fixture("wan", "transformer", "2.1-t2v", "diffusers", "safetensors-sharded")
    index = save_fixture(fx, tmp_path)
    folder = index.parent
    (folder / "config.json").write_text(json.dumps({"num_layers": 2}))
    ck = open_checkpoint(folder)
    assert ck._config_checked is False
    assert ck.config == {"num_layers": 2}
    assert ck._config_checked is True


CASES = [(c.family, c.component, v) for c in components() for v in c.variants]


@pytest.mark.parametrize(("family", "component", "variant"), CASES, ids=["-".join(c) for c in CASES])
def test_every_tiny_models_own_config_passes(tmp_path, family, component, variant):
    comp = get_component(family, component)
    for layout in comp.layouts:
        state, cfg = tiny_state(family, component, variant, layout)
        from weightsmith.io.base import infos_from_state_dict

        validate_config({"_class_name": comp.class_name(variant), **cfg}, infos_from_state_dict(state), "t")
        # JSON turns tuples into lists: the same config as read back from config.json.
        validate_config(json.loads(json.dumps(cfg)), infos_from_state_dict(state), "t")
