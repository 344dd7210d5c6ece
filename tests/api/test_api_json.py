"""For every verb, the API's result serialised with ``to_json()`` is what the CLI prints with
``--json`` for the same inputs (timings aside: they are measured anew by each run)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from apikit import GEN, GEN_ARGS

import weightsmith

# "timing": the auto: search's block of timings (and of what the cache spared the run).
TIMINGS = {"seconds", "load_seconds", "time_ratio", "timing"}


def untimed(doc: Any) -> Any:
    """The document without its timings (keys in TIMINGS, at any depth)."""
    if isinstance(doc, dict):
        return {k: untimed(v) for k, v in doc.items() if k not in TIMINGS}
    if isinstance(doc, list):
        return [untimed(v) for v in doc]
    return doc


def same(api: dict[str, Any], cli_out: str) -> None:
    assert untimed(api) == untimed(json.loads(cli_out))


def test_inspect(tiny, run_cli):
    for path in (tiny["pipe"], tiny["q8"]):
        r = run_cli("inspect", path, "--json")
        assert r.code == 0, r.err
        result = weightsmith.inspect(path)
        assert result.to_json() == json.loads(r.out)  # no timings at all
    assert result.detection is not None and result.detection.family == "wan"
    assert weightsmith.inspect(tiny["pipe"]).components["transformer"].parameters > 0


def test_convert(tiny, run_cli, tmp_path):
    dst = tmp_path / "wan.safetensors"
    result = weightsmith.convert(tiny["transformer"], dst, to="original", dtype="bf16")
    r = run_cli(
        "convert", tiny["transformer"], dst, "--to", "original", "--dtype", "bf16", "--overwrite", "--json"
    )
    assert r.code == 0, r.err
    assert result.to_json() == json.loads(r.out)
    assert result.to_json()["schema"] == "weightsmith.convert/1"
    assert result.bytes == dst.stat().st_size and result.layout == "original"


@pytest.mark.parametrize("scheme", ["gguf:Q4_K_M", "int8"])
def test_quantize(tiny, run_cli, tmp_path, scheme):
    dst = tmp_path / ("m.gguf" if scheme.startswith("gguf:") else "m-int8")
    result = weightsmith.quantize(tiny["transformer"], dst, scheme=scheme, keep=["blocks.0.*"])
    r = run_cli(
        "quantize",
        tiny["transformer"],
        dst,
        "--scheme",
        scheme,
        "--keep",
        "blocks.0.*",
        "--overwrite",
        "--json",
    )
    assert r.code == 0, r.err
    same(result.to_json(), r.out)
    table = json.loads(Path(f"{dst}.layers.json").read_text())
    assert result.to_json()["layers"] == table["layers"]  # the per-layer table, row for row
    assert result.bytes_after < result.bytes_before and result.min_sqnr_db is not None


def test_quantize_auto(tiny, run_cli, tmp_path):
    """scheme="auto:gguf" runs the search the CLI runs; the second run reads the costs cached."""
    keep = ["blocks.*.cross_attn.*", "blocks.1.*", "blocks.0.self_attn.*", "blocks.0.ffn.2.*"]
    dst = tmp_path / "auto.gguf"
    target = "latent_sqnr>=20"
    result = weightsmith.quantize(
        tiny["transformer"], dst, scheme="auto:gguf", target=target, max_tries=2, keep=keep, generation=GEN
    )
    r = run_cli(
        "quantize", tiny["transformer"], dst, "--scheme", "auto:gguf", "--target", target,
        "--max-tries", "2", *[a for k in keep for a in ("--keep", k)], *GEN_ARGS, "--overwrite", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    same(result.to_json(), r.out)
    doc = result.to_json()
    assert doc["schema"] == "weightsmith.auto/1" and result.passed and doc["passed"]
    assert result.bytes == dst.stat().st_size == doc["bytes"]
    assert dict(result.types) == {row["name"]: row["type"] for row in doc["layers"]} and result.types
    assert result.tries == len(doc["attempts"]) <= 2
    with pytest.raises(weightsmith.errors.UsageError, match="imatrix do not apply"):
        weightsmith.quantize(tiny["transformer"], dst, scheme="auto:gguf", target=target, imatrix="x")
    with pytest.raises(weightsmith.errors.UsageError, match="target apply to auto: schemes only"):
        weightsmith.quantize(tiny["transformer"], dst, scheme="gguf:Q8_0", target=target)


def test_verify(tiny, run_cli):
    args = dict(no_cache=True, consumer="weightsmith", gate=["latent_sqnr>=20"], **GEN)
    result = weightsmith.verify(tiny["pipe"], [tiny["q8"]], **args)
    r = run_cli(
        "verify", tiny["pipe"], tiny["q8"], "--no-cache", "--consumer", "weightsmith",
        "--gate", "latent_sqnr>=20", *GEN_ARGS, "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    same(result.to_json(), r.out)
    [c] = result.candidates
    assert result.passed and c.passed and [g.gate for g in c.gates] == ["finite", "frames", "latent_sqnr>=20"]
    assert c.metrics["latent_sqnr"] is not None and c.metrics["latent_sqnr"] >= 20


def test_verify_gate_failure_is_a_result_not_an_exception(tiny):
    args = dict(no_cache=True, consumer="weightsmith", gate=["latent_sqnr>=1000"], **GEN)
    result = weightsmith.verify(tiny["pipe"], [tiny["q8"]], **args)
    assert not result.passed and [g.gate for g in result.failed_gates] == ["latent_sqnr>=1000"]
    with pytest.raises(weightsmith.errors.GateFailed, match="1 verification gate") as e:
        result.raise_for_gates()
    assert e.value.exit_code == 1  # what the command line exits with


def test_sensitivity(tiny, run_cli):
    result = weightsmith.sensitivity(tiny["transformer"], scheme="gguf:Q4_0", **GEN)
    r = run_cli("sensitivity", tiny["transformer"], "--scheme", "gguf:Q4_0", *GEN_ARGS, "--json")
    assert r.code == 0, r.err
    same(result.to_json(), r.out)
    ranks = [x.output_sqnr_db for x in result.layers if x.output_sqnr_db is not None]
    assert len(result.layers) > 10 and ranks == sorted(ranks)


def test_imatrix(tiny, run_cli, tmp_path):
    out = tmp_path / "wan.imatrix.gguf"
    result = weightsmith.imatrix(tiny["transformer"], out, **GEN)
    r = run_cli("imatrix", tiny["transformer"], out, *GEN_ARGS, "--overwrite", "--json")
    assert r.code == 0, r.err
    same(result.to_json(), r.out)
    assert result.path == out and out.is_file() and result.tensors > 10


def test_publish_dry_run(tiny, run_cli, tmp_path):
    folder = tmp_path / "pub"
    folder.mkdir()
    art = folder / "model-Q8_0.gguf"
    art.hardlink_to(tiny["q8"])
    weightsmith.verify(
        tiny["pipe"], [art], no_cache=True, consumer="weightsmith", report=folder / "report", **GEN
    )
    stage = tmp_path / "stage"
    result = weightsmith.publish(folder, repo_id="me/tiny-GGUF", dry_run=True, out=stage)
    r = run_cli("publish", folder, "--repo-id", "me/tiny-GGUF", "--dry-run", "--out", stage, "--json")
    assert r.code == 0, r.err
    assert result.to_json() == json.loads(r.out)
    assert "tiny-Q8_0.gguf" in result.files and result.url is None


def test_export_onnx_without_the_onnx_packages_is_a_usage_error(tiny, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the onnx extra were not installed
    with pytest.raises(weightsmith.errors.UsageError, match="ONNX export needs the onnxscript package"):
        weightsmith.export_onnx(tiny["transformer"], tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()
