"""The publish command: refusals (exit 2, one line), --dry-run, and the upload call."""

from __future__ import annotations

import sys
import types

from publishkit import BASE, REPO, report_of, write_report


def test_dry_run_lists_files_with_sizes(run_cli, passing, tmp_path):
    stage = tmp_path / "stage"
    r = run_cli("publish", passing, "--repo-id", REPO, "--base-model", BASE, "--dry-run", "--out", stage)
    assert r.code == 0, r.err
    assert f"would upload to {REPO}" in r.out
    for name in ("README.md", "SHA256SUMS", "Wan-Tiny-Q8_0.gguf", "fidelity.svg", "total"):
        assert name in r.out
    assert "MB" in r.out  # sizes are printed
    assert sorted(p.name for p in stage.iterdir()) == [
        "README.md",
        "SHA256SUMS",
        "Wan-Tiny-Q8_0.gguf",
        "fidelity.svg",
    ]


def test_failed_artifact_refused(run_cli, work, tmp_path):
    r = run_cli("publish", work, "--repo-id", REPO, "--dry-run", "--out", tmp_path / "stage")
    assert r.code == 2
    assert "wan-Q2_K.gguf: verification failed" in r.err and "--allow-unverified" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not (tmp_path / "stage").exists()


def test_unverified_artifact_refused(run_cli, passing, tmp_path):
    (passing / "report").rename(tmp_path / "elsewhere")
    r = run_cli("publish", passing, "--repo-id", REPO, "--dry-run", "--out", tmp_path / "stage")
    assert r.code == 2 and "no verify report scored it" in r.err


def test_stale_report_does_not_vouch_for_a_new_file(run_cli, passing, tmp_path):
    body = report_of(passing)
    for c in body["candidates"]:
        c["bytes"] += 1
    write_report(passing, body)
    r = run_cli("publish", passing, "--repo-id", REPO, "--dry-run", "--out", tmp_path / "stage")
    assert r.code == 2 and "no verify report scored it" in r.err


def test_allow_unverified_publishes_with_a_warning(run_cli, work, tmp_path):
    stage = tmp_path / "stage"
    r = run_cli(
        "publish",
        work,
        "--repo-id",
        REPO,
        "--base-model",
        BASE,
        "--dry-run",
        "--allow-unverified",
        "--out",
        stage,
    )
    assert r.code == 0, r.err
    assert "warning: publishing unverified" in r.err
    assert (stage / "Wan-Tiny-Q2_K.gguf").is_file()


def test_bad_input_is_one_line_exit_2(run_cli, passing, tmp_path):
    for args in (
        ("publish", tmp_path / "missing", "--repo-id", REPO, "--dry-run"),
        ("publish", passing, "--repo-id", "not a repo", "--dry-run"),
        ("publish", passing / "wan-Q8_0.gguf", "--repo-id", REPO, "--dry-run"),
        ("publish", (tmp_path / "empty").mkdir() or tmp_path / "empty", "--repo-id", REPO, "--dry-run"),
        ("publish", passing, "--repo-id", REPO, "--dry-run", "--out", passing / "stage"),
    ):
        r = run_cli(*args)
        assert r.code == 2, (args, r.err)
        assert r.err.startswith("error: ") and len(r.err.strip().splitlines()) == 1, r.err


def test_stage_replaces_only_its_own_previous_output(run_cli, passing, tmp_path):
    stage = tmp_path / "stage"
    for _ in range(2):  # a second run replaces the first staging folder
        r = run_cli("publish", passing, "--repo-id", REPO, "--dry-run", "--out", stage)
        assert r.code == 0, r.err
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    r = run_cli("publish", passing, "--repo-id", REPO, "--dry-run", "--out", other)
    assert r.code == 2 and (other / "keep.txt").read_text() == "mine"


def test_upload_is_called_with_the_stage(run_cli, passing, tmp_path, monkeypatch):
    calls = []

    def upload_folder_to_hub(
        folder, repo_id, *, private=False, revision=None, commit_message="", progress=True, endpoint=None
    ):
        calls.append((sorted(p.name for p in folder.iterdir()), repo_id, private, revision, commit_message))
        return f"https://hub.example/{repo_id}/commit/abc"

    fake = types.ModuleType("weightsmith.publish.upload")
    fake.upload_folder_to_hub = upload_folder_to_hub
    monkeypatch.setitem(sys.modules, "weightsmith.publish.upload", fake)
    monkeypatch.setenv("HF_TOKEN", "hf_FAKEtokenNEVERprinted")
    stage = tmp_path / "stage"
    r = run_cli("publish", passing, "--repo-id", REPO, "--private", "--revision", "dev", "--out", stage)
    assert r.code == 0, r.err
    assert r.out.strip().endswith(f"https://hub.example/{REPO}/commit/abc")
    names, repo, private, revision, message = calls[0]
    assert "Wan-Tiny-Q8_0.gguf" in names and repo == REPO and private and revision == "dev"
    assert "Wan-Tiny" in message
    assert "hf_FAKE" not in r.out + r.err
    assert all("hf_FAKE" not in p.read_text(errors="replace") for p in stage.iterdir() if p.suffix != ".gguf")


def test_publish_lands_on_a_loopback_hub(run_cli, passing, tmp_path, hub):
    """The real huggingface_hub client uploads the staged folder; what arrived is checked byte for byte."""
    from hub_server import FAKE_TOKEN
    from huggingface_hub import ModelCard

    hub.state.namespaces.add(REPO.split("/")[0])  # the fake token may write there
    stage = tmp_path / "stage"
    r = run_cli("publish", passing, "--repo-id", REPO, "--out", stage)
    assert r.code == 0, r.err
    got = hub.state.files(REPO)
    staged = {p.relative_to(stage).as_posix(): p.read_bytes() for p in stage.rglob("*") if p.is_file()}
    assert staged and got == staged
    assert "Wan-Tiny" in hub.state.commits[-1].summary
    card = ModelCard(got["README.md"].decode())
    meta = card.data.to_dict()
    assert meta["library_name"] == "gguf" and meta["quantized_by"] == REPO.split("/")[0]
    assert FAKE_TOKEN not in r.out + r.err
    assert all(FAKE_TOKEN.encode() not in v for v in got.values())
