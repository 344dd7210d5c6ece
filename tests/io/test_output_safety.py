"""Output safety through the CLI: a terminated run, a full disk, an impossible or refused
destination each end in one line and leave no partial output; stale partials of a killed run
are removed; modes follow the umask."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from weightsmith.io.atomic import partial_name
from weightsmith.tiny import Fixture, save_fixture

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def src(tmp_path):
    return save_fixture(
        Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), tmp_path / "in"
    )


def _one_error_line(r) -> None:
    assert r.code == 2, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert "Traceback" not in r.err and "internal error" not in r.err


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# The child converts with a writer that, once it has written the first tensor into the partial
# output, says so through a file and then waits: SIGTERM arrives while the output is half written,
# every time, however loaded the machine is.
_CHILD = r"""
import pathlib, sys, time
import weightsmith.io.writers as writers

ready = pathlib.Path(sys.argv[1])
write = writers.write_safetensors_stream

def slow(f, specs, tensors, metadata=None):
    def paced():
        for i, item in enumerate(tensors):
            yield item
            if i == 0:
                ready.write_text("writing")
                time.sleep(120)
    write(f, specs, paced(), metadata)

writers.write_safetensors_stream = slow
from weightsmith.cli import main
main(sys.argv[2:])
"""


@pytest.mark.slow  # a child process that imports torch: a few seconds
def test_sigterm_while_writing_leaves_nothing(tmp_path, src):
    out = tmp_path / "out"
    out.mkdir()
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(ready),
            "convert",
            str(src),
            str(out / "wan"),
            "--to",
            "diffusers",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.02)
        partials = _left(out)
        assert len(partials) == 1 and partials[0].startswith(f".wan.{proc.pid}-"), partials
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated; no output was left behind", err
    assert "Traceback" not in err
    assert _left(out) == []


def test_a_killed_runs_partial_is_removed_by_the_next_run(tmp_path, src, run_cli):
    out = tmp_path / "out"
    out.mkdir()
    child = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    child.wait()  # a pid that no longer runs, as after SIGKILL
    stale = out / partial_name(out / "wan", child.pid)
    stale.mkdir()
    (stale / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 1000)
    r = run_cli("convert", src, out / "wan", "--to", "diffusers")
    assert r.code == 0, r.err
    notes = [line for line in r.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "removed 1 stale partial output of" in notes[0]
    assert _left(out) == ["wan"]


def test_overwrite_refuses_an_unrelated_folder(tmp_path, src, run_cli):
    dst = tmp_path / "project"
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    r = run_cli("convert", src, dst, "--to", "diffusers", "--overwrite")
    _one_error_line(r)
    assert "is a non-empty folder that is not a weightsmith output; refusing to replace it" in r.words
    assert (dst / "notes.txt").read_text() == "mine" and _left(dst) == ["notes.txt"]
    # a previous output is replaced
    assert run_cli("convert", src, tmp_path / "prev", "--to", "diffusers").code == 0
    r = run_cli("convert", src, tmp_path / "prev", "--to", "diffusers", "--overwrite")
    assert r.code == 0, r.err
    # a folder where a file is asked for, and the other way round
    r = run_cli("convert", src, dst, "--to", "original", "--overwrite")
    _one_error_line(r)
    (tmp_path / "f.safetensors").mkdir()
    r = run_cli("convert", src, tmp_path / "f.safetensors", "--to", "original", "--overwrite")
    _one_error_line(r)
    assert "is a folder and the output is a single file" in r.words


def test_full_disk_is_one_line(tmp_path, src, run_cli, monkeypatch):
    import weightsmith.io.writers as writers

    def full(f, specs, tensors, metadata=None):
        f.write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writers, "write_safetensors_stream", full)
    out = tmp_path / "out"
    out.mkdir()
    for dst, layout in [(out / "wan", "diffusers"), (out / "wan.safetensors", "original")]:
        r = run_cli("convert", src, dst, "--to", layout)
        _one_error_line(r)
        assert "cannot write" in r.words and "no space left on the device" in r.words
        assert "free some space" in r.words
        assert _left(out) == []


def test_read_only_destination_is_one_line(tmp_path, src, run_cli, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    real_mkdir = os.mkdir

    def read_only(path, *a, **k):
        if Path(path).parent == out:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", read_only)
    r = run_cli("convert", src, out / "wan", "--to", "diffusers")
    _one_error_line(r)
    assert "cannot create the output" in r.words and "Read-only file system" in r.words
    assert _left(out) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_folder_without_write_permission(tmp_path, src, run_cli):
    out = tmp_path / "locked"
    out.mkdir(mode=0o555)
    r = run_cli("convert", src, out / "wan", "--to", "diffusers")
    _one_error_line(r)
    assert "cannot write into" in r.words


@pytest.mark.parametrize(
    "dst", ["/proc/weightsmith-out", "/sys/weightsmith-out", "/proc/self/weightsmith-out"]
)
def test_destination_under_proc_or_sys(src, run_cli, dst):
    r = run_cli("convert", src, dst, "--to", "diffusers")
    _one_error_line(r)
    assert "virtual file system" in r.words


def test_name_over_255_bytes(tmp_path, src, run_cli):
    r = run_cli("convert", src, tmp_path / ("w" * 300 + ".safetensors"), "--to", "original")
    _one_error_line(r)
    assert "bytes long" in r.words and "at most 255" in r.words
    assert _left(tmp_path) == ["in"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_modes_follow_the_umask(tmp_path, src, run_cli, umask):
    old = os.umask(umask)
    try:
        assert run_cli("convert", src, tmp_path / "d", "--to", "diffusers").code == 0
        assert run_cli("convert", src, tmp_path / "o.safetensors", "--to", "original").code == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
    for p in (tmp_path / "d").iterdir():
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p


def test_an_os_error_reaching_the_cli_is_one_line(tmp_path, src, run_cli, monkeypatch):
    import weightsmith.convert.run as run

    def broken(*a, **k):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))

    monkeypatch.setattr(run, "convert", broken)
    r = run_cli("convert", src, tmp_path / "x", "--to", "diffusers")
    _one_error_line(r)
    assert "Input/output error" in r.words
