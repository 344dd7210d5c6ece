"""Tiny text-encoder folders as a user has them: transformers' config.json + model.safetensors and
a SentencePiece model trained here (nothing downloaded), for the GGUF tests and the recorder of
llama.cpp's reference output (record_llama_cpp_t5.py)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "cat",
    "sat",
    "on",
    "mat",
    "video",
    "of",
    "a",
    "red",
    "car",
    "driving",
    "along",
    "coast",
    "at",
    "sunset",
    "bird",
    "flying",
    "above",
    "ocean",
    "waves",
    "city",
    "street",
    "night",
    "lights",
    "rain",
    "forest",
    "mountain",
    "snow",
    "river",
    "boat",
]


def train_spiece(vocab: int = 64) -> bytes:
    """A unigram SentencePiece model (T5's ids: pad 0, eos 1, unk 2, no bos), trained deterministically.

    Its normalizer is a three-rule table (A->a, B->b, fullwidth A->A), not nmt_nfkc: the
    precompiled charsmap is then 1 KB instead of 240 KB, which gguf-py's reader (and so
    transformers' GGUF loader) takes seconds per file to parse element by element.
    """
    import tempfile

    import sentencepiece as spm

    r = random.Random(0)
    text = [" ".join(r.choice(WORDS) for _ in range(12)) for _ in range(400)]
    out = io.BytesIO()
    rules = Path(tempfile.mkdtemp()) / "rules.tsv"
    rules.write_text("41\t61\n42\t62\nFF21\t41\n")
    spm.SentencePieceTrainer.train(
        normalization_rule_tsv=str(rules),
        sentence_iterator=iter(text),
        model_writer=out,
        vocab_size=vocab,
        model_type="unigram",
        num_threads=1,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return out.getvalue()


def t5_folder(
    folder: Path, family: str, *, wide: bool = False, tokenizer: bool = True, seed: int = 0
) -> Path:
    """The family's tiny T5-architecture text encoder saved by transformers, with spiece.model."""
    from weightsmith.families import get_component

    comp = get_component(family, "text_encoder")
    model = comp.tiny_model(comp.variants[0], seed=seed, wide=wide)
    model.save_pretrained(str(folder))
    if tokenizer:
        (folder / "spiece.model").write_bytes(train_spiece())
    return folder


def gguf_summary(path: Path) -> dict:
    """Tensors (name -> [shape, type, sha256 of bytes]) and non-general metadata (key -> [types,
    value]; byte arrays and long lists by sha256) of a GGUF file: what two files must share."""
    import hashlib

    from gguf import GGUFReader

    r = GGUFReader(str(path))
    tensors = {
        t.name: [[int(d) for d in t.shape], t.tensor_type.name, hashlib.sha256(t.data.tobytes()).hexdigest()]
        for t in r.tensors
    }
    meta = {}
    for k, f in r.fields.items():
        if k.startswith(("GGUF.", "general.", "weightsmith.")):
            continue
        value = f.contents()
        if isinstance(value, list) and len(value) > 200:
            value = "sha256:" + hashlib.sha256(json.dumps(value).encode()).hexdigest()
        meta[k] = [[int(t) for t in f.types], value]
    return {"tensors": tensors, "metadata": meta}
