"""``quantize --scheme auto:gguf`` end to end on a tiny Wan transformer with few searchable layers:
the file passes its target in an independent verify, the same inputs give the same bytes, an
unreachable target is exit 1 with nothing left behind, and misuse is one line and exit 2."""

from __future__ import annotations

import hashlib
import json

from autokit import GEN, KEEP_GGUF

TARGET = "latent_sqnr>=28"


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_auto_gguf_passes_independent_verify_and_is_deterministic(wan_transformer, tmp_path, run_cli):
    src = wan_transformer
    dst = tmp_path / "auto.gguf"
    args = ["--scheme", "auto:gguf", "--target", TARGET, "--max-tries", "3", *GEN, *KEEP_GGUF]
    r = run_cli("quantize", src, dst, *args, "--json", "--report", tmp_path / "rep")
    assert r.code == 0, r.err
    out = json.loads(r.out)
    assert out["schema"] == "weightsmith.auto/1" and out["passed"]
    layers = {row["name"]: row["type"] for row in out["layers"]}
    assert set(layers) == {
        "blocks.0.self_attn.o.weight",
        "blocks.0.self_attn.v.weight",
        "blocks.0.ffn.0.weight",
        "blocks.0.ffn.2.weight",
    }
    assert out["bytes"] == dst.stat().st_size
    assert json.loads((tmp_path / "auto.gguf.verify" / "report.json").read_text())["passed"]
    assert (tmp_path / "rep" / "auto.html").read_text().count("<svg") == 1
    # the chosen types are in the file, each tensor as chosen
    from weightsmith.io import open_checkpoint

    ck = open_checkpoint(dst)
    try:
        types = {k: i.storage for k, i in ck.infos.items()}
    finally:
        ck.close()
    assert all(types[n] == t for n, t in layers.items()), (types, layers)

    v = run_cli("verify", src, dst, *GEN[:-2], "--gate", TARGET, "--no-cache", "--consumer", "weightsmith")
    assert v.code == 0, v.err

    again = tmp_path / "again.gguf"
    r2 = run_cli("quantize", src, again, *args, "--json")
    assert r2.code == 0, r2.err
    assert json.loads(r2.out)["layers"] == out["layers"]
    assert _sha(again) == _sha(dst)
    assert json.loads(r2.out)["timing"]["recorded_generations"] == 0  # every cost came from the cache

    # --max-size alone: the most faithful mix within Q4_K_M's (predicted) size, at least as good
    q4 = out["uniform"]["gguf:Q4_K_M"]
    sized = tmp_path / "sized.gguf"
    r3 = run_cli(
        "quantize",
        src,
        sized,
        "--scheme",
        "auto:gguf",
        "--max-size",
        str(q4["bytes"]),
        *GEN,
        *KEEP_GGUF,
        "--json",
    )
    assert r3.code == 0, r3.err
    got = json.loads(r3.out)
    assert got["predicted_output_sqnr_db"] >= q4["predicted_db"]
    assert got["fixed_bytes"] + sum(row["bytes"] for row in got["layers"]) <= q4["bytes"]


def test_auto_comfy_is_refused_with_what_to_use(wan_transformer, tmp_path, run_cli):
    r = run_cli(
        "quantize", wan_transformer, tmp_path / "m.safetensors", "--scheme", "auto:comfy", "--target", TARGET
    )
    assert r.code == 2 and "auto:comfy is not available" in r.words and "auto:gguf" in r.words, r.err
    assert not list(tmp_path.iterdir())
