"""The upload against a loopback Hub: the real huggingface_hub client, checked by what arrived."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from hub_server import FAKE_TOKEN, LoopbackHub

from weightsmith.errors import OutputError, UsageError, WeightsmithError
from weightsmith.publish.upload import check_repo_id, scrub, upload_folder_to_hub

REPO = "tester/tiny-gguf"


def make_folder(root: Path, n_gguf: int = 1) -> dict[str, bytes]:
    """A small publish folder: a card, GGUF-like binaries over the LFS threshold, a sha256 list."""
    files: dict[str, bytes] = {
        "README.md": b"---\nlibrary_name: gguf\nbase_model_relation: quantized\n---\n# tiny\n",
    }
    for i in range(n_gguf):
        body = bytes((i * 7 + k * 31) % 256 for k in range(4096 + 1000 * i))
        files[f"tiny-Q{i + 4}_0.gguf"] = b"GGUF\x03\x00\x00\x00" + body
    if n_gguf > 1:
        files["HighNoise/tiny-HighNoise-Q8_0.gguf"] = b"GGUF\x03\x00\x00\x00" + bytes(range(256)) * 20
    sums = "".join(f"{hashlib.sha256(b).hexdigest()}  {p}\n" for p, b in sorted(files.items()))
    files["SHA256SUMS"] = sums.encode()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def lfs_puts(hub: LoopbackHub) -> list[str]:
    return list(hub.state.puts)


def test_upload_lands_with_exact_bytes_and_message(hub: LoopbackHub, tmp_path: Path) -> None:
    folder = tmp_path / "publish"
    folder.mkdir()
    files = make_folder(folder)
    url = upload_folder_to_hub(folder, REPO, commit_message="Q4_0 and Q5_0, verified", progress=False)

    assert hub.state.files(REPO) == files
    [commit] = hub.state.commits
    assert commit.summary == "Q4_0 and Q5_0, verified"
    assert url == f"{hub.url}/{REPO}/commit/{commit.oid}"
    # The binaries went through LFS (one PUT each), the text files inline in the commit.
    assert sorted(hub.state.puts) == sorted(
        hashlib.sha256(files[p]).hexdigest() for p in files if p.endswith(".gguf")
    )
    assert not hub.state.unknown, hub.state.unknown
    assert hub.state.repos[REPO].private is False


def test_private_and_revision(hub: LoopbackHub, tmp_path: Path) -> None:
    folder = tmp_path / "publish"
    folder.mkdir()
    files = make_folder(folder)
    upload_folder_to_hub(folder, REPO, private=True, revision="quants-v2", progress=False)
    assert hub.state.repos[REPO].private is True
    assert hub.state.files(REPO, "quants-v2") == files
    assert hub.state.files(REPO, "main") == {}
    assert hub.state.commits[0].summary == "Upload with weightsmith"
    # The repo exists now: a second upload to it is fine (exist_ok) and sends nothing again.
    upload_folder_to_hub(folder, REPO, revision="quants-v2", progress=False)
    assert len(hub.state.puts) == 1


def test_interrupted_commit_resumes_without_resending_lfs(hub: LoopbackHub, tmp_path: Path) -> None:
    folder = tmp_path / "publish"
    folder.mkdir()
    files = make_folder(folder, n_gguf=3)
    n_lfs = sum(p.endswith(".gguf") for p in files)
    hub.state.fail_commits = 1  # every LFS object arrives, then the commit fails
    with pytest.raises(OutputError) as err:
        upload_folder_to_hub(folder, REPO, progress=False)
    assert "run the same command again" in str(err.value)
    assert len(hub.state.puts) == n_lfs and not hub.state.commits

    upload_folder_to_hub(folder, REPO, progress=False)
    assert len(hub.state.puts) == n_lfs, "a finished LFS file was sent again"
    assert hub.state.files(REPO) == files


def test_upload_cut_after_some_lfs_files_resumes_the_rest(hub: LoopbackHub, tmp_path: Path) -> None:
    folder = tmp_path / "publish"
    folder.mkdir()
    files = make_folder(folder, n_gguf=3)
    hub.state.fail_puts_after = 2  # the third LFS upload is refused: the run stops halfway
    with pytest.raises(WeightsmithError) as err:
        upload_folder_to_hub(folder, REPO, progress=False)
    assert err.value.exit_code == 2
    first = lfs_puts(hub)
    assert len(first) == 2 and not hub.state.commits

    hub.state.fail_puts_after = None
    upload_folder_to_hub(folder, REPO, progress=False)
    again = lfs_puts(hub)[2:]
    assert not set(first) & set(again), "a finished LFS file was sent again"
    assert sorted(first + again) == sorted(
        hashlib.sha256(b).hexdigest() for p, b in files.items() if ".gguf" in p
    )
    assert hub.state.files(REPO) == files


def _walk_messages(e: BaseException | None) -> str:
    out = []
    while e is not None:
        out.append(f"{type(e).__name__}: {e} {getattr(e, 'hint', '')}")
        e = e.__cause__ or e.__context__
    return "\n".join(out)


def _assert_no_token(hub: LoopbackHub, texts: list[str], root: Path) -> None:
    for text in texts:
        assert FAKE_TOKEN not in text
        assert FAKE_TOKEN[3:] not in text
    for path in root.rglob("*"):
        if path.is_file() and path.name != "token":
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path
    # The token went only to the loopback Hub's API, as an Authorization header; never to the
    # LFS upload URLs (presigned storage URLs on the real Hub) and never anywhere else.
    for seen in hub.state.requests:
        for name, value in seen.headers.items():
            if FAKE_TOKEN in value:
                assert name == "authorization" and value == f"Bearer {FAKE_TOKEN}", (seen.path, name)
                assert not seen.path.startswith("/_lfs/"), seen.path
        assert FAKE_TOKEN not in seen.path


@pytest.fixture
def hub_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """Every log record, huggingface_hub's debug lines included (it does not propagate to root)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_DEBUG", True)  # the client logs each request as a curl line
    lib = logging.getLogger("huggingface_hub")
    lib.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    yield caplog
    lib.removeHandler(caplog.handler)


def test_token_never_leaks_on_success(
    hub: LoopbackHub, tmp_path: Path, capfd: pytest.CaptureFixture[str], hub_logs: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "publish"
    folder.mkdir()
    make_folder(folder, n_gguf=2)
    url = upload_folder_to_hub(folder, REPO, progress=True)
    out, err = capfd.readouterr()
    assert any(r.name.startswith("huggingface_hub") for r in hub_logs.records)  # the logs were seen
    assert any(s.headers.get("authorization") == f"Bearer {FAKE_TOKEN}" for s in hub.state.requests)
    _assert_no_token(hub, [url, out, err, hub_logs.text], tmp_path)


@pytest.mark.parametrize("failure", ["commit", "lfs", "bad_token", "no_repo", "not_your_namespace"])
def test_token_never_leaks_on_failure(
    failure: str,
    hub: LoopbackHub,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    hub_logs: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "publish"
    folder.mkdir()
    make_folder(folder, n_gguf=2)
    hub.state.echo_auth_in_errors = True  # the worst case: a server quoting the token back
    if failure == "commit":
        hub.state.fail_commits = 1
    elif failure == "lfs":
        hub.state.fail_puts_after = 1
    elif failure == "bad_token":
        hub.state.tokens = {"hf_someOtherTokenNotOurs000000"}
    elif failure == "not_your_namespace":
        hub.state.namespaces = {"someone-else"}
    else:  # the repo is gone between create and upload
        monkeypatch.setattr(hub.state, "repos", _Forgetful())
    with pytest.raises(WeightsmithError) as info:
        upload_folder_to_hub(folder, REPO, progress=False)
    e = info.value
    assert e.exit_code == 2
    assert "\n" not in e.one_line()
    if failure == "bad_token":
        assert isinstance(e, UsageError) and "hf auth login" in str(e)
    if failure in ("no_repo", "not_your_namespace"):
        assert isinstance(e, UsageError) and "--repo-id" in str(e)
    if failure in ("commit", "lfs"):
        assert isinstance(e, OutputError) and "run the same command again" in str(e)
    if failure == "lfs":
        assert ".gguf to the Hub's storage failed" in str(e)
    assert "***" in str(e) or failure in (
        "bad_token",
        "no_repo",
        "not_your_namespace",
    )  # scrubbed, not dropped
    out, err = capfd.readouterr()
    _assert_no_token(hub, [_walk_messages(e), repr(e), e.one_line(), out, err, hub_logs.text], tmp_path)


class _Forgetful(dict):
    """A repo table that accepts a repo and then never finds it (404 RepoNotFound on upload)."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def test_not_logged_in_is_a_usage_error(
    hub: LoopbackHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_TOKEN")
    folder = tmp_path / "publish"
    folder.mkdir()
    make_folder(folder)
    with pytest.raises(UsageError, match="hf auth login"):
        upload_folder_to_hub(folder, REPO, progress=False)
    assert not hub.state.requests


@pytest.mark.parametrize(
    "repo_id",
    [
        "",
        "a/b/c",
        "models/x",
        "-bad/name",
        "ns/name-",
        "ns/na--me",
        "ns/na..me",
        "ns/x.git",
        "ns/has space",
        "ns/caf\u00e9",
        "ns/line\nbreak",
        "ns/" + "x" * 97,
        "https://huggingface.co/ns/name",
        "ns/",
    ],
)
def test_bad_repo_ids_are_refused_before_any_request(repo_id: str, hub: LoopbackHub, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        upload_folder_to_hub(tmp_path, repo_id, progress=False)
    assert info.value.exit_code == 2
    line = info.value.one_line()
    assert "\n" not in line and "--repo-id" in line
    assert not hub.state.requests


@pytest.mark.parametrize("repo_id", ["name", "ns/name", "Org-1/Wan2.2-I2V-A14B-GGUF", "u/a_b.c-d", "a/b"])
def test_good_repo_ids(repo_id: str) -> None:
    assert check_repo_id(repo_id) == repo_id


@pytest.mark.parametrize("revision", ["", "a b", "../x", "x..y", "br/", "x.lock", "-x"])
def test_bad_revisions_are_refused(revision: str, hub: LoopbackHub, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--revision"):
        upload_folder_to_hub(tmp_path, REPO, revision=revision, progress=False)
    assert not hub.state.requests


def test_missing_folder(hub: LoopbackHub, tmp_path: Path) -> None:
    with pytest.raises(WeightsmithError) as info:
        upload_folder_to_hub(tmp_path / "nope", REPO, progress=False)
    assert info.value.exit_code == 2 and not hub.state.requests


def test_unreachable_hub_is_one_line_exit_2(hub: LoopbackHub, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    with LoopbackHub() as gone:
        dead = gone.url
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    folder = tmp_path / "publish"
    folder.mkdir()
    make_folder(folder)
    with pytest.raises(WeightsmithError) as info:
        upload_folder_to_hub(folder, REPO, progress=False)
    assert info.value.exit_code == 2 and "\n" not in info.value.one_line()
    assert f"cannot reach the Hub at {dead}" in str(info.value)
    assert FAKE_TOKEN not in _walk_messages(info.value)


def test_scrub() -> None:
    text = (
        f"token {FAKE_TOKEN} sent as authorization: Bearer {FAKE_TOKEN}; "
        "{'Authorization': 'Basic dXNlcjpwYXNz'} from https://user:secretpass@hub.example/api"
    )
    clean = scrub(text, (FAKE_TOKEN,))
    for secret in (FAKE_TOKEN, "dXNlcjpwYXNz", "secretpass", "FAKEtoken"):
        assert secret not in clean
    assert scrub("Authorization=hf_abcdefghijk") == "Authorization=***"
    assert scrub("nothing secret here") == "nothing secret here"


def test_large_files_are_streamed_not_read_whole(hub: LoopbackHub, tmp_path: Path) -> None:
    import tracemalloc

    folder = tmp_path / "publish"
    folder.mkdir()
    big = folder / "big-Q8_0.gguf"
    digest = hashlib.sha256()
    with big.open("wb") as f:
        for i in range(64):  # 64 MiB, written 1 MiB at a time
            block = hashlib.sha256(i.to_bytes(4, "little")).digest() * (1 << 15)
            digest.update(block)
            f.write(block)
    (folder / "README.md").write_text("# big\n")
    tracemalloc.start()
    try:
        upload_folder_to_hub(folder, REPO, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"the upload held {peak >> 20} MiB: a 64 MiB file was read whole"
    stored = hub.state.lfs[digest.hexdigest()]
    assert stored.stat().st_size == 64 << 20 and hub.state.puts == [digest.hexdigest()]
