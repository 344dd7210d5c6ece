"""GGUF of T5 / UMT5 text encoders: llama.cpp's ``t5encoder`` layout.

* F16: the same tensors (names, shapes, types, bytes) and the same t5encoder and tokenizer keys
  and values as llama.cpp's own convert_hf_to_gguf.py makes of the same folder (recorded in
  tests/data/llama_cpp_t5encoder.json by record_llama_cpp_t5.py; set LLAMA_CPP_DIR to run the
  converter live as well);
* F16, Q8_0 and Q4_K_M load with transformers' own GGUF loader as the right class, with weights
  equal to our dequantized weights (``convert --to diffusers --dtype fp32``);
* ComfyUI-GGUF's text-encoder conventions: architecture, tokenizer keys, tensor names its map takes;
* a missing tokenizer is one line, exit 2, naming what to pass; nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from textenc_kit import gguf_summary, t5_folder

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "llama_cpp_t5encoder.json"
CLASSES = {"wan": "UMT5EncoderModel", "cogvideox": "T5EncoderModel"}

# ComfyUI-GGUF's T5 loader: the architectures it takes as a T5 text encoder, the tokenizer keys it
# rebuilds UMT5's SentencePiece model from, and its llama.cpp -> transformers name replacements.
COMFY_ARCHES = {"t5", "t5encoder"}
COMFY_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.remove_extra_whitespaces",
    "tokenizer.ggml.precompiled_charsmap",
)
COMFY_T5_MAP = (
    ("enc.", "encoder."),
    (".blk.", ".block."),
    ("token_embd", "shared"),
    ("output_norm", "final_layer_norm"),
    ("attn_q", "layer.0.SelfAttention.q"),
    ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"),
    ("attn_o", "layer.0.SelfAttention.o"),
    ("attn_norm", "layer.0.layer_norm"),
    ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"),
    ("ffn_up", "layer.1.DenseReluDense.wi_1"),
    ("ffn_down", "layer.1.DenseReluDense.wo"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"),
    ("ffn_norm", "layer.1.layer_norm"),
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Per family: the narrow folder (the reference's) and a wide one (every K-type applies)."""
    root = tmp_path_factory.mktemp("t5")
    return {
        (fam, wide): t5_folder(root / f"{fam}-{'wide' if wide else 'narrow'}", fam, wide=wide)
        for fam in CLASSES
        for wide in (False, True)
    }


@pytest.mark.parametrize("family", list(CLASSES))
def test_f16_is_what_llama_cpp_writes(family, folders, tmp_path, run_cli):
    out = tmp_path / "te-F16.gguf"
    r = run_cli("quantize", folders[(family, False)], out, "--scheme", "gguf:F16")
    assert r.code == 0, r.err
    ours = gguf_summary(out)
    ref = json.loads(REFERENCE.read_text())[family]
    assert ours["tensors"] == ref["tensors"]
    assert ours["metadata"] == ref["metadata"]
    assert {v[1] for v in ours["tensors"].values()} == {"F16", "F32"}


@pytest.mark.skipif(not os.environ.get("LLAMA_CPP_DIR"), reason="set LLAMA_CPP_DIR to llama.cpp's source")
@pytest.mark.parametrize("family", list(CLASSES))
def test_f16_is_what_llama_cpp_writes_live(family, tmp_path, run_cli):
    import shutil

    from record_llama_cpp_t5 import run_converter

    folder = t5_folder(tmp_path / "src", family)
    r = run_cli("quantize", folder, tmp_path / "ours.gguf", "--scheme", "gguf:F16")
    assert r.code == 0, r.err
    theirs = shutil.copytree(folder, tmp_path / "theirs")
    run_converter(Path(os.environ["LLAMA_CPP_DIR"]), theirs, tmp_path / "theirs.gguf")
    assert gguf_summary(tmp_path / "ours.gguf") == gguf_summary(tmp_path / "theirs.gguf")


@pytest.mark.parametrize("recipe", ["F16", "Q8_0", "Q4_K_M"])
@pytest.mark.parametrize("family", list(CLASSES))
def test_transformers_loads_our_gguf_as_the_right_class(family, recipe, folders, tmp_path, run_cli):
    import transformers

    out = tmp_path / f"te-{recipe}.gguf"
    r = run_cli("quantize", folders[(family, True)], out, "--scheme", f"gguf:{recipe}")
    assert r.code == 0, r.err
    cls = getattr(transformers, CLASSES[family])
    theirs = cls.from_pretrained(str(tmp_path), gguf_file=out.name)
    # the config transformers reads from the file names the class and the model type
    assert theirs.config.architectures == [CLASSES[family]]
    assert theirs.config.model_type == ("umt5" if family == "wan" else "t5")
    r = run_cli("convert", out, tmp_path / "deq", "--to", "diffusers", "--dtype", "fp32")
    assert r.code == 0, r.err
    ours = cls.from_pretrained(str(tmp_path / "deq"))
    a, b = theirs.state_dict(), ours.state_dict()
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k].float(), b[k]), k
    if recipe != "F16":  # quantized, not a float copy
        src = cls.from_pretrained(str(folders[(family, True)])).state_dict()
        assert not torch.equal(
            b["encoder.block.0.layer.0.SelfAttention.q.weight"],
            src["encoder.block.0.layer.0.SelfAttention.q.weight"],
        )
        # llama.cpp never quantizes the relative-attention bias (F16 here, as its converter writes it)
        key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        assert torch.equal(b[key], src[key].half().float())


@pytest.mark.parametrize("family", list(CLASSES))
def test_comfyui_gguf_text_encoder_conventions(family, folders, tmp_path, run_cli):
    from gguf import GGUFReader

    out = tmp_path / "te-Q8_0.gguf"
    r = run_cli("quantize", folders[(family, True)], out, "--scheme", "gguf:Q8_0")
    assert r.code == 0, r.err
    reader = GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() in COMFY_ARCHES
    for key in COMFY_TOKENIZER_KEYS:
        assert key in reader.fields, key
    assert reader.fields["tokenizer.ggml.model"].contents() == "t5"
    names = set()
    for t in reader.tensors:
        name = t.name
        for a, b in COMFY_T5_MAP:
            name = name.replace(a, b)
        names.add(name)
    import transformers

    want = transformers.AutoConfig.from_pretrained(str(folders[(family, True)]))
    model = getattr(transformers, CLASSES[family])(want)
    assert names == {k for k in model.state_dict() if k != "encoder.embed_tokens.weight"}
    # transformers' loader tells UMT5 from T5 by "umt5" in general.name
    assert ("umt5" in reader.fields["general.name"].contents().lower()) == (family == "wan")


def test_missing_tokenizer_is_one_line_exit_2(tmp_path, run_cli):
    folder = t5_folder(tmp_path / "te", "wan", tokenizer=False)
    out = tmp_path / "te.gguf"
    r = run_cli("quantize", folder, out, "--scheme", "gguf:Q8_0")
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "no tokenizer.model or spiece.model" in r.words and "copy the model's spiece.model" in r.words
    assert not out.exists() and not list(tmp_path.glob("te.gguf*"))


def test_tokenizer_of_a_pipeline_folder_is_found(tmp_path, run_cli):
    """A Diffusers pipeline keeps it in tokenizer/ beside text_encoder/."""
    pipe = tmp_path / "pipe"
    t5_folder(pipe / "text_encoder", "wan", tokenizer=False)
    (pipe / "tokenizer").mkdir()
    from textenc_kit import train_spiece

    (pipe / "tokenizer" / "spiece.model").write_bytes(train_spiece())
    r = run_cli("quantize", pipe / "text_encoder", tmp_path / "te.gguf", "--scheme", "gguf:F16")
    assert r.code == 0, r.err
    from gguf import GGUFReader

    assert len(GGUFReader(str(tmp_path / "te.gguf")).fields["tokenizer.ggml.tokens"].contents()) == 96
