"""`weightsmith quantize` on hostile inputs, through the CLI: imatrix files holding NaN, infinities,
negative, all-zero or extreme values or inconsistent counts; weights holding NaN, infinities or
values beyond what a type's scales hold; empty, invalid or unmatched --keep globs and malformed
--keep-blocks; devices the kernels cannot use; an existing DST.layers.json. Each ends in exit 2
with one line naming what is wrong (and no output), or exit 0 with an output that holds only
finite values."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_inputs import (
    IM_NAMES,
    Q4K_NAMES,
    assert_finite_gguf,
    dat_bytes,
    gguf_entries,
    importance,
    write_gguf_imatrix,
)
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.usefixtures("one_thread")

Q4 = ("--scheme", "gguf:Q4_K_M")
FLT_MAX = float(torch.finfo(torch.float32).max)


def _refused(r, *words: str) -> None:
    """Exit 2 with one error line containing each of ``words`` (in the message's own words)."""
    assert r.code == 2, (r.code, r.err)
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err
    for w in words:
        assert w in r.words, (w, r.err)


def _nothing_written(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir() if p.name != "im") == [], list(folder.iterdir())


def _write_imatrix(tmp: Path, fmt: str, values: dict[str, np.ndarray]) -> Path:
    im = tmp / "im"
    im.mkdir(exist_ok=True)
    if fmt == "dat":
        p = im / "m.dat"
        p.write_bytes(dat_bytes(values, ncall=1))  # one call: the values are stored as they are
        return p
    return write_gguf_imatrix(im / "m.gguf", gguf_entries(values, count=1.0))


def _variant(tiny_wan: Path, tmp: Path, name: str, index: int, value: float) -> Path:
    """A copy of the tiny model with one weight element set to ``value``."""
    out = tmp / "src" / "transformer"
    shutil.copytree(tiny_wan, out)
    (st,) = out.glob("*.safetensors")
    sd = load_file(st)
    sd[name].view(-1)[index] = value
    save_file(sd, st)
    return out


def _layers(dst: Path) -> dict[str, dict]:
    body = json.loads(dst.with_name(dst.name + ".layers.json").read_text())
    return {r["name"]: r for r in body["layers"]}


# ----------------------------------------------------------------------------- imatrix values


def _with(bad: np.ndarray, where: str) -> dict[str, np.ndarray]:
    values = {n: importance(i) for i, n in enumerate(IM_NAMES)}
    values[where] = bad
    return values


BAD_VALUES = {
    "nan": np.where(np.arange(256) == 5, np.nan, importance()).astype(np.float32),
    "inf": np.where(np.arange(256) == 5, np.inf, importance()).astype(np.float32),
    "negative": np.where(np.arange(256) == 9, -0.5, importance()).astype(np.float32),
}


@pytest.mark.parametrize("fmt", ["dat", "gguf"])
@pytest.mark.parametrize("kind", sorted(BAD_VALUES))
def test_imatrix_with_nan_inf_or_negative_values_is_refused(tiny_wan, tmp_path, run_cli, fmt, kind):
    im = _write_imatrix(tmp_path, fmt, _with(BAD_VALUES[kind], "blocks.0.ffn.0.weight"))
    r = run_cli("quantize", tiny_wan, tmp_path / "o.gguf", *Q4, "--imatrix", im)
    _refused(r, "blocks.0.ffn.0.weight")
    _nothing_written(tmp_path)


EXTREME_VALUES = {
    # the tensor never saw an activation: quantized without importance weights
    "all-zero": (np.zeros(256, np.float32), "all zero"),
    # 3e38 overflows ggml's float32 sums (NaN blocks); importance is relative: rescaled
    "huge": (np.full(256, 3e38, np.float32), "rescaled"),
    "huge-mixed": (np.where(np.arange(256) % 2 == 0, 3e38, 1.0).astype(np.float32), "rescaled"),
    # so small that the float32 sums underflow to 0/0
    "tiny": (importance() * np.float32(1e-30), "rescaled"),
    # 16- and 32-column runs without importance: all-zero blocks (no importance inside) in ggml
    "zero-runs": (np.where((np.arange(256) // 32) % 2 == 0, 0.0, importance()).astype(np.float32), "mean"),
}


@pytest.mark.parametrize("fmt", ["dat", "gguf"])
@pytest.mark.parametrize("kind", sorted(EXTREME_VALUES))
def test_imatrix_zero_or_extreme_values_give_finite_sensible_output(tiny_wan, tmp_path, run_cli, fmt, kind):
    bad, note = EXTREME_VALUES[kind]
    values = {n: bad for n in IM_NAMES}
    im = _write_imatrix(tmp_path, fmt, values)
    dst = tmp_path / "o.gguf"
    r = run_cli("quantize", tiny_wan, dst, *Q4, "--imatrix", im)
    assert r.code == 0, r.err
    assert "note: imatrix: 4 entries" in r.words and note in r.words, r.err
    assert_finite_gguf(dst)
    rows = _layers(dst)
    for name in IM_NAMES:  # as good as a plain run (~23 dB for Q4_K, ~35 dB for Q6_K), not a zero tensor
        assert rows[name]["sqnr_db"] > (20 if name in Q4K_NAMES else 30), (name, rows[name])
        assert rows[name]["imatrix"] is (kind != "all-zero")
    assert "notes" in json.loads(dst.with_name(dst.name + ".layers.json").read_text())


def test_imatrix_within_range_is_used_as_written(tiny_wan, tmp_path, run_cli):
    """Values inside the safe range are not rescaled: the bytes stay those of ggml's kernels."""
    from weightsmith.quantize.gguf.imatrix import read_imatrix

    values = {n: importance(i) * np.float32(1e6) for i, n in enumerate(IM_NAMES)}
    im = read_imatrix(_write_imatrix(tmp_path, "gguf", values))
    assert im.notes == []
    for n in IM_NAMES:
        assert torch.equal(im.get(n), torch.from_numpy(values[n]))


# ----------------------------------------------------------------------------- imatrix structure


def _gguf_case(case: str) -> dict[str, np.ndarray]:
    t = gguf_entries({n: importance(i) for i, n in enumerate(IM_NAMES)})
    n = "blocks.0.ffn.0.weight"
    if case == "counts-empty":
        t[f"{n}.counts"] = np.zeros((0,), np.float32)
    elif case == "counts-zero-with-sums":
        t[f"{n}.counts"] = np.zeros((1,), np.float32)
    elif case == "counts-too-many":
        t[f"{n}.counts"] = np.ones((3,), np.float32)
    elif case == "counts-negative":
        t[f"{n}.counts"] = np.full((1,), -4.0, np.float32)
    elif case == "in_sum2-2d-counts-short":
        t[f"{n}.in_sum2"] = np.ones((2, 256), np.float32)
    elif case == "in_sum2-empty":
        t[f"{n}.in_sum2"] = np.zeros((0,), np.float32)
    elif case == "wrong-length":
        t[f"{n}.in_sum2"] = np.ones((128,), np.float32)
    return t


GGUF_CASES = [
    "counts-empty",
    "counts-zero-with-sums",
    "counts-too-many",
    "counts-negative",
    "in_sum2-2d-counts-short",
    "in_sum2-empty",
    "wrong-length",
]


@pytest.mark.parametrize("case", GGUF_CASES)
def test_imatrix_gguf_with_inconsistent_counts_or_shapes_is_refused(tiny_wan, tmp_path, run_cli, case):
    (tmp_path / "im").mkdir()
    try:
        im = write_gguf_imatrix(tmp_path / "im" / "m.gguf", _gguf_case(case))
    except Exception as e:  # a shape our own writer cannot express: nothing to test
        pytest.skip(f"writer refuses {case}: {e}")
    r = run_cli("quantize", tiny_wan, tmp_path / "o.gguf", *Q4, "--imatrix", im)
    _refused(r, "blocks.0.ffn.0.weight")
    _nothing_written(tmp_path)


def test_imatrix_gguf_entry_never_seen_is_dropped_with_a_note(tiny_wan, tmp_path, run_cli):
    """count 0 and no sums: what llama-imatrix records for a tensor that got no input."""
    t = gguf_entries({n: importance(i) for i, n in enumerate(IM_NAMES)})
    t["blocks.0.ffn.0.weight.in_sum2"] = np.zeros(256, np.float32)
    t["blocks.0.ffn.0.weight.counts"] = np.zeros(1, np.float32)
    (tmp_path / "im").mkdir()
    im = write_gguf_imatrix(tmp_path / "im" / "m.gguf", t)
    dst = tmp_path / "o.gguf"
    r = run_cli("quantize", tiny_wan, dst, *Q4, "--imatrix", im)
    assert r.code == 0, r.err
    assert "1 entry (blocks.0.ffn.0.weight) all zero" in r.words
    rows = _layers(dst)
    assert rows["blocks.0.ffn.0.weight"]["imatrix"] is False
    assert rows["blocks.0.self_attn.q.weight"]["imatrix"] is True
    assert_finite_gguf(dst)


def test_imatrix_dat_with_negative_call_count_or_empty_entry_is_refused(tiny_wan, tmp_path, run_cli):
    (tmp_path / "im").mkdir()
    p = tmp_path / "im" / "m.dat"
    p.write_bytes(dat_bytes({"blocks.0.ffn.0.weight": importance()}, ncall=-3))
    _refused(run_cli("quantize", tiny_wan, tmp_path / "o.gguf", *Q4, "--imatrix", p), "-3 calls")
    p.write_bytes(dat_bytes({"blocks.0.ffn.0.weight": np.zeros(0, np.float32)}))
    _refused(run_cli("quantize", tiny_wan, tmp_path / "o.gguf", *Q4, "--imatrix", p), "0 values")
    _nothing_written(tmp_path)


def test_imatrix_of_another_model_or_a_folder_is_refused(tiny_wan, tmp_path, run_cli):
    im = _write_imatrix(tmp_path, "dat", {"layers.0.mlp.weight": importance()})
    r = run_cli("quantize", tiny_wan, tmp_path / "o.gguf", *Q4, "--imatrix", im)
    _refused(r, "names a tensor of this model")
    r = run_cli("quantize", tiny_wan, tmp_path / "o.gguf", *Q4, "--imatrix", im.parent)
    _refused(r, "is a folder")
    _nothing_written(tmp_path)


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("scheme", ["gguf:Q4_K_M", "gguf:Q8_0", "int8", "fp8", "int4", "int4-asym"])
def test_non_finite_weight_is_refused_naming_the_tensor(tiny_wan, tmp_path, run_cli, scheme, value):
    src = _variant(tiny_wan, tmp_path, "blocks.0.ffn.net.0.proj.weight", 7, value)
    out = tmp_path / "out"
    out.mkdir()
    dst = out / ("o.gguf" if scheme.startswith("gguf") else "o")
    r = run_cli("quantize", src, dst, "--scheme", scheme)
    _refused(r, "NaN or infinite", "--keep")
    assert "ffn.0.weight" in r.words or "ffn.net.0.proj.weight" in r.words, r.err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("qtype", ["gguf:Q4_K_M", "gguf:Q8_0", "gguf:Q4_0", "gguf:IQ4_NL"])
def test_weight_beyond_the_block_scales_is_refused_then_kept(tiny_wan, tmp_path, run_cli, qtype):
    """1e30 overflows ggml's float16 block scales: NaN blocks, which are never written."""
    src = _variant(tiny_wan, tmp_path, "blocks.0.ffn.net.0.proj.weight", 7, 1e30)
    dst = tmp_path / "o.gguf"
    r = run_cli("quantize", src, dst, "--scheme", qtype)
    _refused(r, "'blocks.0.ffn.0.weight' does not fit", "gguf:BF16")
    assert not dst.exists() and not (tmp_path / "o.gguf.layers.json").exists()
    # kept, the tensor is F16, which does not hold 1e30 either: refused, with the same way out
    r = run_cli("quantize", src, dst, "--scheme", qtype, "--keep", "blocks.0.ffn.0.weight")
    _refused(r, "'blocks.0.ffn.0.weight' holds values beyond F16's range", "gguf:BF16")
    r = run_cli("quantize", src, dst, "--scheme", "gguf:BF16")
    assert r.code == 0, r.err
    tensors = assert_finite_gguf(dst)
    assert tensors["blocks.0.ffn.0.weight"][0] == "BF16"


@pytest.mark.parametrize("value", [1e30, 3e38, -FLT_MAX, FLT_MAX, 1e-44])
@pytest.mark.parametrize("scheme", ["int8", "fp8", "fp8-tensor", "int4", "int4-asym"])
def test_linear_schemes_keep_extreme_finite_weights_finite(tiny_wan, tmp_path, run_cli, scheme, value):
    src = _variant(tiny_wan, tmp_path, "blocks.0.ffn.net.0.proj.weight", 7, value)
    dst = tmp_path / "o"
    r = run_cli("quantize", src, dst, "--scheme", scheme)
    assert r.code == 0, r.err
    for st in dst.glob("*.safetensors"):
        for k, v in load_file(st).items():
            if v.is_floating_point():
                assert torch.isfinite(v.float()).all(), k
    from weightsmith.quantize.linear.run import open_source

    ck = open_source(dst, None)
    try:
        w = ck.get("blocks.0.ffn.net.0.proj.weight")
    finally:
        ck.close()
    assert torch.isfinite(w).all()


def test_summary_counts_nan_sqnr_as_the_worst():
    from weightsmith.quantize.report import LayerRecord, QuantizeResult

    layers = [
        LayerRecord("a", (256, 256), "Q4_K", "default", 1, 1, 22.0),
        LayerRecord("b", (256, 256), "Q4_K", "default", 1, 1, math.nan),
        LayerRecord("c", (256, 256), "Q4_K", "default", 1, 1, 25.0),
    ]
    lines = QuantizeResult(Path("x.gguf"), "gguf:Q4_K_M", layers).summary_lines()
    lowest = [ln for ln in lines if "lowest SQNR" in ln]
    assert lowest[0].split()[2] == "b" and len(lowest) == 3, lines
    (row,) = [ln for ln in lines if ln.strip().startswith("Q4_K")]
    assert "nan" in row.split()[3], row


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--keep", ""), "empty pattern"),
        (("--keep", "   "), "empty pattern"),
        (("--keep", "["), "matches no tensor"),
        (("--keep", "blocks.9.*"), "matches no tensor"),
        (("--keep", "*a" * 30000), "pattern of 60000 characters"),
        (("--keep", "b" * 900), "matches no tensor"),
        (("--keep", "blocks.0.*", "--keep", "blocks.0.self_atn.q.weight"), "'blocks.0.self_atn.q.weight'"),
        (("--keep-blocks", ""), "--keep-blocks"),
        (("--device", "meta"), "meta"),
        (("--device", "xla"), "xla"),
        (("--device", "nonsense"), "unknown device"),
        (("--device", "cuda:999"), "cuda"),
    ],
)
def test_gguf_options_refused_before_any_work(tiny_wan, tmp_path, run_cli, args, words):
    r = run_cli("quantize", tiny_wan, tmp_path / "o.gguf", *Q4, *args)
    _refused(r, words)
    _nothing_written(tmp_path)


def test_unmatched_keep_names_real_tensors(tiny_wan, tmp_path, run_cli):
    r = run_cli("quantize", tiny_wan, tmp_path / "o.gguf", *Q4, "--keep", "blocks.0.self_atn.q.weight")
    _refused(r, "matches no tensor", "blocks.0.self_attn.q.weight")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--keep", ""), "empty pattern"),
        (("--keep", "blocks.0.self_attn.*"), "matches no tensor"),  # original names; int8 uses Diffusers'
        (("--keep-blocks", ""), "--keep-blocks"),
        (("--keep-blocks", "first:"), "--keep-blocks"),
        (("--keep-blocks", "first:1,"), "--keep-blocks"),
        (("--keep-blocks", "first:1,first:2"), "--keep-blocks"),
        (("--keep-blocks", "first:" + "9" * 5000), "--keep-blocks"),
        (("--keep-blocks", "first:\u0661"), "--keep-blocks"),  # an Arabic-Indic digit
        (("--keep-blocks", "last:2"), "1 transformer blocks"),
        (("--device", "meta"), "meta"),
    ],
)
def test_linear_options_refused_before_any_work(tiny_wan, tmp_path, run_cli, args, words):
    r = run_cli("quantize", tiny_wan, tmp_path / "o", "--scheme", "int8", *args)
    _refused(r, words)
    _nothing_written(tmp_path)


def test_keep_glob_that_matches_keeps(tiny_wan, tmp_path, run_cli):
    dst = tmp_path / "o.gguf"
    r = run_cli("quantize", tiny_wan, dst, *Q4, "--keep", "blocks.0.ffn.*")
    assert r.code == 0, r.err
    assert _layers(dst)["blocks.0.ffn.0.weight"]["reason"] == "--keep"


# ----------------------------------------------------------------------------- DST.layers.json


@pytest.mark.parametrize("scheme", ["gguf:Q8_0", "int8"])
def test_existing_layer_table_is_not_replaced_without_overwrite(tiny_wan, tmp_path, run_cli, scheme):
    dst = tmp_path / ("o.gguf" if scheme.startswith("gguf") else "o")
    table = tmp_path / f"{dst.name}.layers.json"
    table.write_text("an earlier run's table\n")
    r = run_cli("quantize", tiny_wan, dst, "--scheme", scheme)
    _refused(r, "already exists (the per-layer table of an earlier run)", "--overwrite")
    assert table.read_text() == "an earlier run's table\n"
    assert not dst.exists()
    r = run_cli("quantize", tiny_wan, dst, "--scheme", scheme, "--overwrite")
    assert r.code == 0, r.err
    assert json.loads(table.read_text())["file"] == dst.name
    assert sorted(os.listdir(tmp_path)) == sorted([dst.name, table.name])


def test_failed_run_leaves_no_output_and_keeps_the_earlier_table(tiny_wan, tmp_path, run_cli):
    src = _variant(tiny_wan, tmp_path, "blocks.0.ffn.net.2.weight", 3, float("nan"))
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "o.gguf"
    r = run_cli("quantize", tiny_wan, dst, *Q4)
    assert r.code == 0, r.err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_cli("quantize", src, dst, *Q4, "--overwrite")
    _refused(r, "blocks.0.ffn.2.weight")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no partials, nothing replaced


def test_report_false_leaves_an_existing_table_alone(tiny_wan, tmp_path):
    from weightsmith.quantize.gguf.run import quantize_gguf

    table = tmp_path / "o.gguf.layers.json"
    table.write_text("kept\n")
    quantize_gguf(tiny_wan, tmp_path / "o.gguf", "gguf:Q8_0", progress=False, report=False)
    assert table.read_text() == "kept\n"
