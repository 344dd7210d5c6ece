"""The staging folder: names, links, sha256 list, expert folders, size limits."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
from publishkit import REPO, report_of, write_report

from weightsmith.publish import limits


def test_files_are_linked_not_copied_and_summed(run_cli, passing, tmp_path):
    stage = tmp_path / "stage"
    assert run_cli("publish", passing, "--repo-id", REPO, "--dry-run", "--out", stage).code == 0
    staged = stage / "Wan-Tiny-Q8_0.gguf"
    assert os.path.samefile(staged, passing / "wan-Q8_0.gguf")
    digest = hashlib.sha256((passing / "wan-Q8_0.gguf").read_bytes()).hexdigest()
    assert (stage / "SHA256SUMS").read_text() == f"{digest}  Wan-Tiny-Q8_0.gguf\n"
    assert (stage / "fidelity.svg").read_text().startswith("<svg")
    # the artifacts are untouched and nothing is left beside the stage
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "stage"]


def test_name_option_and_default_stage(run_cli, passing):
    r = run_cli("publish", passing, "--repo-id", REPO, "--name", "wan2.1-tiny", "--dry-run")
    assert r.code == 0, r.err
    stage = passing.parent / "wan2.1-tiny-hub"
    assert (stage / "wan2.1-tiny-Q8_0.gguf").is_file()


def test_two_experts_get_their_folders(run_cli, passing, tmp_path):
    """A candidate verified as transformer=HIGH,transformer_2=LOW is published in HighNoise/ and LowNoise/."""
    shutil.copyfile(passing / "wan-Q8_0.gguf", passing / "wan-Q8_0-low.gguf")
    body = report_of(passing)
    c = next(c for c in body["candidates"] if c["label"] == "wan-Q8_0.gguf")
    c["paths"] = {"transformer": "wan-Q8_0.gguf", "transformer_2": "wan-Q8_0-low.gguf"}
    c["bytes"] *= 2
    write_report(passing, body)
    stage = tmp_path / "stage"
    r = run_cli(
        "publish", passing, "--repo-id", REPO, "--dry-run", "--out", stage, "--base-model", "Org/Base"
    )
    assert r.code == 0, r.err
    assert (stage / "HighNoise" / "Wan-Tiny-HighNoise-Q8_0.gguf").is_file()
    assert (stage / "LowNoise" / "Wan-Tiny-LowNoise-Q8_0.gguf").is_file()
    sums = (stage / "SHA256SUMS").read_text()
    assert "HighNoise/Wan-Tiny-HighNoise-Q8_0.gguf" in sums and "LowNoise/" in sums
    card = (stage / "README.md").read_text()
    assert "transformer_2=transformer_2" in card and "HighNoise/" in card


def test_two_files_with_one_name_are_refused(run_cli, passing, tmp_path):
    (passing / "b").mkdir()
    os.link(passing / "wan-Q8_0.gguf", passing / "b" / "wan-Q8_0.gguf")
    r = run_cli(
        "publish", passing, "--repo-id", REPO, "--dry-run", "--allow-unverified", "--out", tmp_path / "s"
    )
    assert r.code == 2 and "would both be published as Wan-Tiny-Q8_0.gguf" in r.err


def test_file_over_the_hub_limit_is_refused_unread(run_cli, passing, tmp_path):
    big = passing / "huge-Q8_0.gguf"
    with open(big, "wb") as f:
        try:
            f.truncate(limits.HARD_LIMIT + 1)  # sparse: no data is written
        except OSError:
            pytest.skip("this file system cannot hold a sparse 500 GB file")
    r = run_cli("publish", passing, "--repo-id", REPO, "--dry-run", "--out", tmp_path / "s")
    assert r.code == 2, r.err
    assert "the Hub refuses files over 500 GB" in r.err and "not split" in r.err
    assert not (tmp_path / "s").exists()


def test_file_above_the_recommendation_warns(run_cli, passing, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "RECOMMENDED", 1000)
    r = run_cli("publish", passing, "--repo-id", REPO, "--dry-run", "--out", tmp_path / "s")
    assert r.code == 0 and "warning: Wan-Tiny-Q8_0.gguf is" in r.err and "recommends" in r.err
