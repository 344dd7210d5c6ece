"""The demo's verification matrix on one family with two schemes: convert, quantize, verify, and a
multi-run report with the fidelity-against-size plot and table."""

from __future__ import annotations

import json

from weightsmith.verify.matrix import WISHED_SCHEMES, available_schemes, fidelity_rows, run_matrix
from weightsmith.verify.report import write_report


def test_schemes_come_from_what_is_registered():
    got = available_schemes()
    assert got and set(got) <= set(WISHED_SCHEMES)
    assert [s for s in WISHED_SCHEMES if s in got] == got  # the wish list's order
    assert available_schemes(["gguf:Q4_K_M", "no-such-scheme"]) == ["gguf:Q4_K_M"]


def test_matrix_and_its_report(tmp_path):
    schemes = available_schemes(["gguf:Q8_0", "gguf:Q2_K", "int8"])
    res = run_matrix(tmp_path / "m", families=[("sana", "1.0")], schemes=schemes, seeds=(0,), steps=2)
    rows = fidelity_rows(res)
    labels = [r["candidate"] for r in rows]
    # The converted original-layout file first (exact), then each scheme; GGUF also via diffusers.
    assert labels[0] == "sana-original.safetensors" and rows[0]["exact"]
    assert "sana-Q8_0.gguf" in labels and "sana-Q8_0.gguf [diffusers GGUF]" in labels
    by = {r["candidate"]: r for r in rows}
    assert by["sana-Q8_0.gguf"]["psnr"] > by["sana-Q2_K.gguf"]["psnr"]
    assert by["sana-Q2_K.gguf"]["size_ratio"] < by["sana-Q8_0.gguf"]["size_ratio"] < 1
    assert not by["sana-Q2_K.gguf"]["passed"]  # the example gates psnr>=30, ssim>=0.95
    html = write_report(tmp_path / "rep", res.runs + res.runs, title="matrix")
    body = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert body["schema"] == "weightsmith.verify-matrix/1" and len(body["runs"]) == 2
    text = html.read_text()
    assert "Fidelity against size" in text and "final-latent SQNR (dB) against size" in text
    assert "| model | candidate | size ratio |" in (tmp_path / "rep" / "report.md").read_text()
