"""Prompt sources: text prompts encoded once by the pipeline folder's own text encoder (a tiny UMT5
and a word-level tokenizer built here), embeddings from a safetensors file, seeded embeddings;
and the --vae-tiling pass-through."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from verifykit import GEN, settings

from weightsmith.verify import VerifyOptions, verify
from weightsmith.verify.tiny import save_tiny_pipeline


@pytest.fixture(scope="module")
def wan_with_text_encoder(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("te")
    pipe = save_tiny_pipeline(root / "pipe", "wan", "2.1-t2v")
    words = ["<pad>", "</s>", "<unk>", "a", "cat", "dog", "on", "the", "moon", "red", "car"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(pipe / "tokenizer")
    torch.manual_seed(0)
    cfg = UMT5Config(
        vocab_size=len(words),
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
    )
    UMT5EncoderModel(cfg).save_pretrained(pipe / "text_encoder")
    index = json.loads((pipe / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "UMT5EncoderModel"]
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    return pipe


def test_text_prompts_go_through_the_pipeline_text_encoder(wan_with_text_encoder, tmp_path):
    pipe = wan_with_text_encoder
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cat on the moon\n\na dog\n")
    s = settings(prompts=str(prompts), negative_prompt="car", seeds=(0, 1), text_len=None)
    res = verify(
        VerifyOptions(str(pipe), [str(pipe / "transformer")], s, cache_dir=tmp_path / "c", progress=False)
    )
    (c,) = res.candidates
    assert [(it.prompt, it.seed) for it in c.items] == [
        ("prompt0", 0),
        ("prompt1", 0),
        ("prompt0", 1),
        ("prompt1", 1),
    ]
    assert c.exact
    other = tmp_path / "other.txt"
    other.write_text("a car\n")
    res2 = verify(
        VerifyOptions(
            str(pipe),
            [str(pipe / "transformer")],
            settings(prompts=str(other)),
            cache_dir=tmp_path / "c",
            progress=False,
        )
    )
    assert res2.cache["misses"] == 1  # other words, other embeddings, other baseline


def test_text_prompts_need_a_text_encoder(wan, run_cli, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    r = run_cli("verify", wan["pipe"], wan["Q8_0"], *GEN, "--prompts", prompts)
    assert r.code == 2 and "text encoder" in r.words
    r = run_cli("verify", wan["transformer"], wan["Q8_0"], *GEN, "--prompts", prompts)
    assert r.code == 2 and "transformer alone" in r.words


def test_embeddings_file(wan, run_cli, tmp_path):
    g = torch.Generator().manual_seed(5)
    f = tmp_path / "emb.safetensors"
    save_file(
        {
            "prompt_embeds": torch.randn(2, 6, 64, generator=g),
            "negative_prompt_embeds": torch.randn(2, 6, 64, generator=g),
        },
        str(f),
    )
    r = run_cli("verify", wan["pipe"], wan["transformer"], *GEN, "--prompts", f, "--json", "--no-cache")
    assert r.code == 0, r.err
    items = json.loads(r.out)["candidates"][0]["items"]
    assert [it["prompt"] for it in items] == ["prompt0", "prompt1"] and all(it["exact"] for it in items)
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    r = run_cli("verify", wan["pipe"], wan["transformer"], *GEN, "--prompts", bad)
    assert r.code == 2 and "prompt_embeds" in r.words


def test_vae_tiling_passes_through(wan, tmp_path):
    res = verify(
        VerifyOptions(
            str(wan["pipe"]),
            [str(wan["transformer"])],
            settings(vae_tiling=True),
            cache_dir=wan["cache"],
            progress=False,
        )
    )
    assert res.settings["vae_tiling"] and res.candidates[0].exact
