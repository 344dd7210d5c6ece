"""Metric definitions (SSIM against a direct implementation and a closed form, PSNR, SQNR, cosine,
flicker, collapsed frames) and gate parsing/evaluation. No models."""

from __future__ import annotations

import math

import pytest
import torch

from weightsmith.errors import InputError, UsageError
from weightsmith.verify.gates import evaluate, failure_table, load_gates_toml, parse_gate
from weightsmith.verify.metrics import (
    collapsed_frames,
    compare,
    cosine,
    jsonable,
    psnr,
    sqnr,
    ssim_frames,
    temporal_change,
)
from weightsmith.verify.pipelines import Generation


def _ssim_direct(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM by its definition, window by window (11x11 Gaussian, sigma 1.5), averaged."""
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x * x) / (2 * 1.5**2))
    w = torch.outer(g, g)
    w = w / w.sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(a.shape[0]):
        for i in range(a.shape[1] - 10):
            for j in range(a.shape[2] - 10):
                pa, pb = a[ch, i : i + 11, j : j + 11].double(), b[ch, i : i + 11, j : j + 11].double()
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * pa * pa).sum() - ma * ma, (w * pb * pb).sum() - mb * mb
                cov = (w * pa * pb).sum() - ma * mb
                vals.append(
                    ((2 * ma * mb + c1) * (2 * cov + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2))).item()
                )
    return sum(vals) / len(vals)


def test_ssim_matches_its_definition():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 16, 18, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ours = ssim_frames(a, b)
    for f in range(2):
        assert ours[f] == pytest.approx(_ssim_direct(a[f], b[f]), abs=1e-10)
    assert ssim_frames(a, a) == [1.0, 1.0]
    assert ssim_frames(a, b) == pytest.approx(ssim_frames(b, a), abs=1e-12)  # symmetric


def test_ssim_of_constant_frames_has_a_closed_form():
    a, b = torch.full((1, 3, 12, 12), 0.3), torch.full((1, 3, 12, 12), 0.6)
    c1 = 0.01**2
    assert ssim_frames(a, b)[0] == pytest.approx((2 * 0.3 * 0.6 + c1) / (0.3**2 + 0.6**2 + c1), rel=1e-9)


def test_ssim_on_frames_smaller_than_the_window():
    a = torch.rand(1, 3, 4, 6)
    assert ssim_frames(a, a) == [1.0] and ssim_frames(a, 1 - a)[0] < 0.5


def test_psnr_sqnr_cosine():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = a + torch.tensor([0.1, -0.1, 0.1, -0.1])
    assert psnr(a, a) == math.inf and sqnr(a, a) == math.inf and cosine(a, a) == 1.0
    assert psnr(a, b, peak=1.0) == pytest.approx(20.0)  # MSE 0.01
    assert sqnr(a, b) == pytest.approx(10 * math.log10(30 / 0.04))
    assert cosine(a, -a) == pytest.approx(-1.0)
    assert jsonable(math.inf) == "inf" and jsonable(-math.inf) == "-inf" and jsonable(1.5) == 1.5


def test_flicker_and_collapsed_frames():
    t = torch.linspace(0, 1, 4).view(4, 1, 1, 1).expand(4, 3, 8, 8)
    assert temporal_change(t) == pytest.approx(1 / 3)
    assert temporal_change(t[:1]) is None
    ref = torch.rand(3, 3, 8, 8)
    bad = ref.clone()
    bad[1] = 0.0
    bad[2] = 0.7
    assert collapsed_frames(ref, bad) == ["frame 1 is black", "frame 2 is constant"]
    assert collapsed_frames(bad, bad) == []  # the baseline's own flat frames are not a failure


def _gen(lat, frames=None, steps=None, nonfinite=None):
    return Generation(lat, steps if steps is not None else [lat], frames, 1.0, nonfinite)


def test_compare_identical_and_nonfinite():
    lat = torch.randn(1, 4, 2, 3, 3)
    fr = torch.rand(3, 3, 16, 16)
    same = compare(_gen(lat, fr), _gen(lat.clone(), fr.clone()), "p", 0)
    assert same.exact and same.metrics["psnr"] == math.inf and same.metrics["ssim"] == 1.0
    assert same.metrics["latent_max_abs"] == 0.0 and same.metrics["flicker"] == 0.0 and not same.failures
    broken = compare(_gen(lat, fr), _gen(lat, None, steps=[], nonfinite=0), "p", 0)
    assert broken.failures == ["NaN/Inf in the candidate's step 0"] and broken.metrics["psnr"] is None
    dark = fr.clone()
    dark[2] = 0.0
    black = compare(_gen(lat, fr), _gen(lat.clone(), dark), "p", 0)
    assert black.failures == ["frame 2 is black"] and not black.exact
    res = evaluate("c", {"psnr": black.metrics["psnr"]}, black.failures, [parse_gate("psnr>=1")])
    assert [(r.check, r.passed) for r in res] == [("finite", True), ("frames", False), ("psnr>=1", True)]


def test_gates_parse_and_evaluate(tmp_path):
    g = parse_gate(" psnr >= 30 ")
    assert (g.metric, g.op, g.threshold, g.text) == ("psnr", ">=", 30.0, "psnr>=30")
    assert parse_gate("flicker<0.01").passes(0.005) and not parse_gate("latent_sqnr>=inf").passes(1e9)
    for bad in ("psnr", "psnr>=", "psnr => 3", "foo>=1"):
        with pytest.raises(UsageError):
            parse_gate(bad)
    res = evaluate(
        "c",
        {"psnr": 25.0, "ssim": 0.99, "flicker": None},
        [],
        [parse_gate("psnr>=30"), parse_gate("ssim>=0.95"), parse_gate("flicker<=0.1")],
    )
    assert [r.passed for r in res] == [
        True,
        True,
        False,
        True,
        True,
    ]  # finite, frames, psnr, ssim, flicker n/a
    table = failure_table(res)
    assert "psnr>=30" in table and "25.00" in table and "ssim" not in table
    res = evaluate(
        "c",
        {},
        ["s0: NaN/Inf in the candidate's step 3", "s1: NaN/Inf in the candidate's step 3"],
        [parse_gate("psnr>=30")],
    )
    assert not res[0].passed and not res[2].passed

    f = tmp_path / "g.toml"
    f.write_text('gates = ["psnr>=30", "ssim>=0.9"]\n')
    assert [x.text for x in load_gates_toml(f)] == ["psnr>=30", "ssim>=0.9"]
    f.write_text('[gates]\nlatent_sqnr = ">= 20"\nflicker = ["<=0.01", "<0.02"]\npsnr = 28\n')
    assert [x.text for x in load_gates_toml(f)] == [
        "latent_sqnr>=20",
        "flicker<=0.01",
        "flicker<0.02",
        "psnr>=28",
    ]
    f.write_text("gates = 3\n")
    with pytest.raises(InputError):
        load_gates_toml(f)
    f.write_text("gates = [\n")
    with pytest.raises(InputError):
        load_gates_toml(f)
