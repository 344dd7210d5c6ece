"""The demo's closing summary: an honest gate count, said as what the demo shows, not as a failure."""

from __future__ import annotations

from weightsmith.demo import demo_summary
from weightsmith.verify.report.write import markdown

GATES = ("psnr>=30", "ssim>=0.95")


def _rows() -> list[dict]:
    rows = []
    for model in ("wan 2.1-t2v", "cogvideox 5b", "sana 1.0"):
        fam = model.split()[0]
        layout = "sat" if fam == "cogvideox" else "original.safetensors"
        for label, ok in (
            (f"{fam}-{layout}", True),
            (f"{fam}-Q8_0.gguf", True),
            (f"{fam}-Q8_0.gguf [diffusers GGUF]", True),
            (f"{fam}-Q4_K_M.gguf", fam == "sana"),
            (f"{fam}-Q2_K.gguf", False),
            (f"{fam}-int4", False),
        ):
            rows.append({"model": model, "candidate": label, "passed": ok})
    return rows


def test_summary_counts_and_explains():
    lines = demo_summary(_rows(), GATES)
    text = "\n".join(lines)
    assert lines[0] == (
        "18 artifacts written, converted and verified: 10 pass the strict demo gates "
        "(psnr>=30, ssim>=0.95), 8 do not."
    )
    assert "tiny random-weight models" in text and "FAIL" not in text
    assert "Pass on every model: unquantized conversion, Q8_0;" in text
    assert "on some: Q4_K_M (sana);" in text and "on none: Q2_K, int4." in text
    assert len(lines) <= 5


def test_summary_when_everything_passes_has_no_excuse():
    rows = [r | {"passed": True} for r in _rows()]
    lines = demo_summary(rows, GATES)
    assert "18 pass" in lines[0] and "0 do not" in lines[0]
    assert not any("Expected" in ln for ln in lines)


def test_report_headline_replaces_the_verdict():
    md = markdown([], "weightsmith demo", headline="18 artifacts written ...")
    assert "18 artifacts written" in md and "**Result:" not in md
    assert "**Result: PASS**" in markdown([], "weightsmith verify")
