"""Source digests read through windows of read-only maps equal hashlib's over the whole file, at
every window boundary, and a file that cannot be mapped is read instead."""

from __future__ import annotations

import hashlib
import mmap
import os

import pytest

from weightsmith.quantize import hashing


@pytest.mark.parametrize("size", [0, 1, mmap.ALLOCATIONGRANULARITY, 3 * mmap.ALLOCATIONGRANULARITY + 5])
def test_mapped_windows_give_hashlibs_digest(tmp_path, monkeypatch, size):
    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "WINDOW", mmap.ALLOCATIONGRANULARITY)
    p = tmp_path / "src.bin"
    p.write_bytes(os.urandom(size))
    assert hashing.file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()


def test_a_file_that_cannot_be_mapped_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path / "cache"))
    p = tmp_path / "src.bin"
    p.write_bytes(os.urandom(100_000))

    def refuse(*args, **kwargs):
        raise OSError("no maps here")

    monkeypatch.setattr(hashing.mmap, "mmap", refuse)
    assert hashing.file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()
