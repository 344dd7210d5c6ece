"""`weightsmith sensitivity` ranks Linear layers and suggests --keep globs in the names quantize uses;
`weightsmith imatrix` writes llama.cpp's format under the GGUF names, and the matrix changes and
improves K-quant output on the activations the model really sees."""

from __future__ import annotations

import fnmatch
import json
import math

import gguf
import torch
import torch.nn.functional as F
from verifykit import GEN, settings

from weightsmith.load import load_gguf_model
from weightsmith.quantize.gguf.imatrix import read_imatrix
from weightsmith.quantize.gguf.loader import GGMLLinear
from weightsmith.quantize.gguf.run import quantize_gguf
from weightsmith.verify.importance import linear_inputs
from weightsmith.verify.metrics import sqnr
from weightsmith.verify.sensitivity import LayerEffect, suggest_keep


def test_sensitivity_ranks_layers_in_gguf_names(wan, run_cli, tmp_path):
    r = run_cli(
        "sensitivity", wan["pipe"], "--scheme", "gguf:Q3_K_M", *GEN, "--json", "--report", tmp_path / "s"
    )
    assert r.code == 0, r.err
    body = json.loads(r.out)
    assert body["schema"] == "weightsmith.sensitivity/1" and body["scheme"] == "gguf:Q3_K_M"
    layers = body["layers"]
    assert len(layers) == 26  # every Linear of the tiny Wan
    out = [math.inf if v == "inf" else v for v in (x["output_sqnr_db"] for x in layers)]
    assert out == sorted(out)
    reader = gguf.GGUFReader(str(wan["Q2_K"]))
    names = {t.name for t in reader.tensors}
    assert all(n in names for x in layers for n in x["names"])  # the names quantize --keep matches
    assert {x["type"] for x in layers} >= {"Q3_K"}
    assert body["suggested_keep"] and all(
        any(fnmatch.fnmatchcase(n, s) for n in names) for s in body["suggested_keep"]
    )
    assert (tmp_path / "s" / "sensitivity.html").read_text().count("<svg") == 1
    r = run_cli("sensitivity", wan["transformer"], "--scheme", "int8", *GEN, "--top", "3")
    assert r.code == 0 and r.out.count("\n") >= 4 and "suggested: --keep" in r.out
    assert "transformer.blocks" not in r.out and ".weight'" in r.out  # Diffusers names for int8 schemes


def test_keep_suggestions_generalise_across_blocks():
    def eff(name, db):
        return LayerEffect(name, [f"{name}.weight"], "Q3_K", 1, 10.0, db, 0.9)

    layers = [eff("blocks.0.o", 5.0), eff("blocks.1.o", 6.0)] + [
        eff(f"blocks.{i}.q", 20.0 + 0.1 * i) for i in range(18)
    ]
    names = [n for x in layers for n in x.names]
    assert suggest_keep(layers, names) == ["blocks.*.o.weight"]
    layers[1] = eff("blocks.1.o", 30.0)
    assert suggest_keep(sorted(layers, key=lambda x: x.output_sqnr), names) == ["blocks.0.o.weight"]


def test_imatrix_names_counts_and_effect(wan, run_cli, tmp_path):
    im = tmp_path / "wan.imatrix.gguf"
    r = run_cli("imatrix", wan["pipe"], im, *GEN, "--seeds", "100-102")
    assert r.code == 0, r.err
    assert r.out.strip() == str(im)
    m = read_imatrix(im)
    reader = gguf.GGUFReader(str(wan["Q2_K"]))
    quantized = {
        t.name for t in reader.tensors if gguf.GGMLQuantizationType(t.tensor_type).name.startswith("Q")
    }
    assert quantized <= set(m.values)  # every quantized tensor has its importance vector
    assert all(v.numel() == 256 and bool((v > 0).all()) for k, v in m.values.items() if k in quantized)
    raw = gguf.GGUFReader(str(im))
    counts = {t.name: float(t.data[0]) for t in raw.tensors if t.name.endswith(".counts")}
    # Self-attention q sees every video token, CFG on: 3 seeds x 2 steps x 2 branches x 8 tokens.
    assert counts["blocks.0.self_attn.q.weight.counts"] == 3 * 2 * 2 * 8
    assert r.code == 0 and run_cli("imatrix", wan["pipe"], im, *GEN).code == 2  # exists: --overwrite

    plain = quantize_gguf(wan["transformer"], tmp_path / "plain.gguf", "gguf:Q2_K", progress=False).dst
    withim = quantize_gguf(
        wan["transformer"], tmp_path / "im.gguf", "gguf:Q2_K", imatrix=im, progress=False
    ).dst
    assert plain.read_bytes() != withim.read_bytes()
    inputs, base = linear_inputs(str(wan["pipe"]), settings(seeds=(0, 1)))
    ref = dict(base.named_modules())

    def layer_db(path):
        model = load_gguf_model(path)
        vals = [
            sqnr(
                F.linear(inputs[f"{n}.weight"], ref[n].weight),
                F.linear(inputs[f"{n}.weight"], mod.dequantized_weight()),
            )
            for n, mod in model.named_modules()
            if isinstance(mod, GGMLLinear)
        ]
        return sum(vals) / len(vals)

    with torch.no_grad():
        assert layer_db(withim) > layer_db(plain) + 0.3
