"""`weightsmith verify` end to end on a tiny Wan pipeline: exact equality for identical candidates,
gate failures (exit 1 and a table naming them) for broken ones, determinism, the baseline cache,
latents-only verification, the JSON and the report files."""

from __future__ import annotations

import json
import math

import pytest
from verifykit import GEN, settings

from weightsmith.verify import VerifyOptions, parse_gate, verify
from weightsmith.verify.metrics import TIMING


def _metrics(result, label_part: str) -> dict:
    c = next(c for c in result.candidates if label_part in c.label)
    return {k: v for k, v in c.worst.items() if k not in TIMING}


def test_identical_candidates_score_exact_equality(wan, run_cli, tmp_path):
    r = run_cli(
        "verify", wan["pipe"], wan["transformer"], wan["original"], *GEN, "--seeds", "0,1",
        "--gate", "psnr>=99", "--gate", "ssim>=1", "--gate", "latent_cosine>=1", "--gate", "flicker<=0",
        "--no-cache", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    body = json.loads(r.out)
    assert body["schema"] == "weightsmith.verify/1" and body["passed"] and body["frames_decoded"]
    assert len(body["candidates"]) == 2
    for c in body["candidates"]:
        m = c["metrics"]
        assert c["exact"] and c["passed"], c["label"]
        assert m["latent_sqnr"] == "inf" and m["psnr"] == "inf" and m["step_sqnr_min"] == "inf"
        assert m["latent_cosine"] == 1.0 and m["ssim"] == 1.0 and m["ssim_frame_min"] == 1.0
        assert m["latent_max_abs"] == 0.0 and m["flicker"] == 0.0
        assert [it["seed"] for it in c["items"]] == [0, 1]
        assert all(s == "inf" for it in c["items"] for s in it["steps"]["sqnr"])
        assert len(c["items"][0]["frames"]["psnr"]) == 5
    # The original-layout file is a third of the pipeline folder's transformer bytes? No: same weights.
    assert body["candidates"][1]["metrics"]["size_ratio"] == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize(
    ("key", "gates", "named"),
    [
        ("zeroed", ["psnr>=40"], "psnr>=40"),
        ("nan", ["psnr>=10"], "NaN/Inf in the candidate's weights: transformer.blocks.1.attn1.to_q.weight"),
        ("overflow", ["latent_sqnr>=0"], "NaN/Inf in the candidate's step 0"),
        ("Q2_K", ["psnr>=30", "ssim>=0.97"], "psnr>=30"),
    ],
)
def test_broken_candidates_fail_their_gates(wan, run_cli, key, gates, named):
    args = [a for g in gates for a in ("--gate", g)]
    r = run_cli(
        "verify", wan["pipe"], wan[key], *GEN, *args, "--cache-dir", wan["cache"], "--consumer", "weightsmith"
    )
    assert r.code == 1, r.err
    assert "failed:" in r.out and named in r.out  # the table names the candidate and what failed
    assert wan[key].name in r.out.split("failed:")[1]
    last = r.err.strip().splitlines()[-1]
    assert last.startswith("error:") and "verification gate(s) failed" in last and named.split(" ")[0] in last


def test_q8_passes_and_both_gguf_loaders_agree(wan, tmp_path):
    res = verify(
        VerifyOptions(
            str(wan["pipe"]),
            [str(wan["Q8_0"])],
            settings(),
            gates=[parse_gate("psnr>=30"), parse_gate("latent_sqnr>=25")],
            cache_dir=wan["cache"],
            progress=False,
        )
    )
    assert res.passed
    ours, theirs = res.candidates
    assert ours.loader == "weightsmith" and theirs.loader == "diffusers-gguf"
    assert theirs.label.endswith("[diffusers GGUF]")
    assert ours.worst["size_ratio"] < 0.4
    assert abs(ours.worst["latent_sqnr"] - theirs.worst["latent_sqnr"]) < 1.0
    assert not ours.exact and math.isfinite(ours.worst["psnr"])


def test_determinism_and_cached_baseline_match_fresh(wan, tmp_path):
    opts = dict(
        candidates=[str(wan["Q2_K"]), str(wan["zeroed"])], settings=settings(seeds=(3,)), progress=False
    )
    fresh = verify(VerifyOptions(str(wan["pipe"]), cache_dir=None, **opts))
    first = verify(VerifyOptions(str(wan["pipe"]), cache_dir=tmp_path / "c", **opts))
    cached = verify(VerifyOptions(str(wan["pipe"]), cache_dir=tmp_path / "c", **opts))
    assert first.cache == {"dir": str(tmp_path / "c"), "hits": 0, "misses": 1}
    assert cached.cache["hits"] == 1 and cached.cache["misses"] == 0
    for label in ("Q2_K", "zeroed"):
        assert _metrics(fresh, label) == _metrics(first, label) == _metrics(cached, label)
    # Items too: per-step and per-frame values, bit for bit.
    a, b = fresh.candidates[0].items[0], cached.candidates[0].items[0]
    assert a.step_sqnr == b.step_sqnr and a.frame_psnr == b.frame_psnr and a.frame_ssim == b.frame_ssim


def test_cache_key_follows_settings(wan, tmp_path):
    base = dict(
        candidates=[str(wan["Q8_0"])], cache_dir=tmp_path / "c", consumers="weightsmith", progress=False
    )
    verify(VerifyOptions(str(wan["pipe"]), settings=settings(), **base))
    other = verify(VerifyOptions(str(wan["pipe"]), settings=settings(guidance=2.0), **base))
    assert other.cache["misses"] == 1  # another guidance is another baseline


def test_transformer_alone_scores_latents_and_frame_gates_need_a_vae(wan, run_cli, tmp_path):
    r = run_cli("verify", wan["transformer"], wan["Q8_0"], *GEN, "--gate", "psnr>=30", "--no-cache")
    assert r.code == 2
    assert "need decoded frames" in r.words and "--vae" in r.words
    r = run_cli(
        "verify", wan["transformer"], wan["Q8_0"], *GEN, "--gate", "latent_sqnr>=20", "--no-cache",
        "--consumer", "weightsmith", "--json",
    )  # fmt: skip
    assert r.code == 0, r.err
    body = json.loads(r.out)
    assert not body["frames_decoded"] and any("latents are scored" in n for n in body["notes"])
    m = body["candidates"][0]["metrics"]
    assert m["psnr"] is None and isinstance(m["latent_sqnr"], float) and m["latent_sqnr"] > 20
    # With --vae the same transformer decodes frames again.
    r = run_cli(
        "verify", wan["transformer"], wan["Q8_0"], "--vae", wan["vae"], *GEN, "--gate", "psnr>=25",
        "--no-cache", "--consumer", "weightsmith",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert "psnr" in r.out


def test_report_files(wan, run_cli, tmp_path):
    rep = tmp_path / "rep"
    r = run_cli("verify", wan["pipe"], wan["Q2_K"], *GEN, "--report", rep, "--cache-dir", wan["cache"])
    assert r.code == 0, r.err
    body = json.loads((rep / "report.json").read_text())
    assert body["schema"] == "weightsmith.verify/1" and len(body["candidates"]) == 2
    md = (rep / "report.md").read_text()
    assert "wan-Q2_K.gguf" in md and "| candidate |" in md
    html = (rep / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<svg") >= 5
    assert html.count("data:image/png;base64,") == 2 and html.count("data:image/gif;base64,") == 2
    assert 'src="http' not in html and 'href="http' not in html  # self-contained


def test_usage_errors_exit_2(wan, run_cli):
    assert (
        "unknown --scheduler" in run_cli("verify", wan["pipe"], wan["Q8_0"], *GEN, "--scheduler", "nope").err
    )
    r = run_cli("verify", wan["pipe"], wan["Q8_0"], *GEN, "--scheduler", "ddim")
    assert r.code == 2 and "flow-matching" in r.words
    r = run_cli("verify", wan["pipe"], wan["Q8_0"], *GEN, "--offload", "model", "--device", "cpu")
    assert r.code == 2 and "needs a GPU" in r.words
    r = run_cli("verify", wan["pipe"], wan["Q8_0"], *GEN, "--gate", "psnr=>30")
    assert r.code == 2 and "cannot read gate" in r.words
    r = run_cli("verify", wan["pipe"], wan["Q8_0"], *GEN, "--gate", "sharpness>=3")
    assert r.code == 2 and "known metrics" in r.words
    r = run_cli("verify", wan["pipe"], wan["root"] / "missing.gguf", *GEN)
    assert r.code == 2 and "does not exist" in r.words
    r = run_cli("verify", wan["pipe"], wan["Q8_0"], *GEN, "--height", "40")
    assert r.code == 2 and "WanPipeline refused the generation settings" in r.words and "16" in r.words


def test_gates_from_toml(wan, run_cli, tmp_path):
    f = tmp_path / "gates.toml"
    f.write_text('[gates]\npsnr = ">=60"\nssim = ">= 0.1"\n')
    r = run_cli(
        "verify",
        wan["pipe"],
        wan["Q2_K"],
        *GEN,
        "--gates",
        f,
        "--cache-dir",
        wan["cache"],
        "--consumer",
        "weightsmith",
    )
    failed = r.out.split("failed:")[1]
    assert r.code == 1 and "psnr>=60" in failed and "ssim>=0.1" not in failed


@pytest.mark.parametrize(
    "scheduler", ["lightning", "euler", "unipc", "dpm++", "FlowMatchHeunDiscreteScheduler"]
)
def test_schedulers(wan, scheduler, tmp_path):
    res = verify(
        VerifyOptions(
            str(wan["pipe"]),
            [str(wan["transformer"])],
            settings(scheduler=scheduler, steps=None if scheduler == "lightning" else 2),
            cache_dir=wan["cache"],
            progress=False,
        )
    )
    assert res.candidates[0].exact
    assert res.settings["steps"] == (4 if scheduler == "lightning" else 2)
    if scheduler == "lightning":
        assert res.settings["guidance"] == 1.0 and res.scheduler["class"] == "FlowMatchEulerDiscreteScheduler"
