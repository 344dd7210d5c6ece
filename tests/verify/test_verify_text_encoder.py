"""verify with a quantized text-encoder candidate (GGUF, ComfyUI scaled fp8): text prompts through the baseline folder's
tokenizer and the candidate's encoder, prompt-embedding metrics per prompt, then the latent and
frame metrics of the baseline's transformer driven by those embeddings (tiny Wan pipeline)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from verifykit import GEN

from weightsmith.api import quantize
from weightsmith.verify.tiny import save_tiny_pipeline


@pytest.fixture(scope="module")
def wan_with_text_encoder(tmp_path_factory):
    """The tiny Wan pipeline with a tiny UMT5 and a SentencePiece tokenizer trained here (a t5encoder
    GGUF embeds it)."""
    import sys
    from pathlib import Path

    from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

    sys.path.insert(0, str(Path(__file__).parents[1] / "quantize"))
    from textenc_kit import train_spiece

    root = tmp_path_factory.mktemp("te")
    pipe = save_tiny_pipeline(root / "pipe", "wan", "2.1-t2v")
    spm = root / "spiece.model"
    spm.write_bytes(train_spiece())
    T5Tokenizer(vocab_file=str(spm), extra_ids=0, legacy=False).save_pretrained(pipe / "tokenizer")
    (pipe / "tokenizer" / "spiece.model").write_bytes(spm.read_bytes())
    torch.manual_seed(0)
    cfg = UMT5Config(
        vocab_size=64,
        d_model=64,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
    )
    UMT5EncoderModel(cfg).save_pretrained(pipe / "text_encoder")
    index = json.loads((pipe / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "UMT5EncoderModel"]
    index["tokenizer"] = ["transformers", "T5Tokenizer"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    return pipe


def test_gguf_text_encoder_is_scored_through_the_pipeline(wan_with_text_encoder, run_cli, tmp_path):
    pipe = wan_with_text_encoder
    q8 = tmp_path / "te-Q8_0.gguf"
    quantize(str(pipe / "text_encoder"), str(q8), scheme="gguf:Q8_0")
    fp8 = tmp_path / "te-fp8-scaled.safetensors"  # ComfyUI's scaled-fp8 text-encoder file
    quantize(str(pipe / "text_encoder"), str(fp8), scheme="fp8", format="comfy-legacy")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car driving along the coast\na bird over the ocean\n")
    r = run_cli(
        "verify",
        pipe,
        q8,
        fp8,
        pipe / "text_encoder",
        *GEN,
        "--prompts",
        prompts,
        "--json",
        "--no-cache",
        "--report",
        tmp_path / "rep",
    )
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    quant, fp8_scaled, same = doc["candidates"]
    for cand in (quant, fp8_scaled):
        assert [it["prompt"] for it in cand["items"]] == ["prompt0", "prompt1"]
        for it in cand["items"]:
            m = it["metrics"]
            assert 0.9 < m["prompt_cosine"] < 1.0 and 10 < m["prompt_sqnr"] < math.inf
            assert m["latent_sqnr"] < math.inf and "psnr" in m
    assert "prompt_sqnr" in (tmp_path / "rep" / "report.md").read_text()
    assert same["exact"] and all(it["metrics"]["prompt_cosine"] == 1.0 for it in same["items"])


def test_text_encoder_candidate_needs_text_prompts(wan_with_text_encoder, run_cli):
    pipe = wan_with_text_encoder
    r = run_cli("verify", pipe, pipe / "text_encoder", *GEN)
    assert r.code == 2 and r.err.count("\n") == 1, r.err
    assert "is a text encoder" in r.words and "--prompts" in r.words
    r = run_cli("verify", pipe / "transformer", pipe / "text_encoder", *GEN)
    assert r.code == 2 and "pipeline folder with text_encoder/" in r.words, r.err
