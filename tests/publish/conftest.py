"""A tiny Wan pipeline, two GGUFs of it and a real verify report (built once per session):
Q8_0 passes the gate, Q2_K fails it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from publishkit import linked_copy

from weightsmith.cli import main


def _cli(*args: str) -> int:
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0


@pytest.fixture(scope="session")
def verified(tmp_path_factory) -> Path:
    """src/: wan-Q8_0.gguf, wan-Q2_K.gguf and report/report.json of one verify run."""
    from weightsmith.quantize.gguf.run import quantize_gguf
    from weightsmith.verify.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("publish")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    old = os.environ.get("WEIGHTSMITH_CACHE")
    os.environ["WEIGHTSMITH_CACHE"] = str(root / "cache")
    try:
        pipe = save_tiny_pipeline(root / "pipe", "wan", "2.1-t2v")
        src = root / "src"
        src.mkdir()
        for recipe in ("Q8_0", "Q2_K"):
            quantize_gguf(pipe / "transformer", src / f"wan-{recipe}.gguf", f"gguf:{recipe}", progress=False)
        code = _cli(
            "verify", pipe, src / "wan-Q8_0.gguf", src / "wan-Q2_K.gguf",
            "--steps", "1", "--height", "32", "--width", "32", "--frames", "5", "--text-len", "8",
            "--seeds", "0", "--consumer", "weightsmith", "--no-cache",
            "--gate", "latent_sqnr>=10", "--report", src / "report",
        )  # fmt: skip
        assert code == 1  # Q2_K fails the gate
        assert (src / "report" / "report.json").is_file()
        return src
    finally:
        torch.set_num_threads(n)
        if old is None:
            os.environ.pop("WEIGHTSMITH_CACHE", None)
        else:
            os.environ["WEIGHTSMITH_CACHE"] = old


@pytest.fixture
def work(verified, tmp_path) -> Path:
    """This test's own copy of the verified folder (hard links)."""
    return linked_copy(verified, tmp_path / "dir")


@pytest.fixture
def passing(work) -> Path:
    """The folder with only the artifact that passed."""
    (work / "wan-Q2_K.gguf").unlink()
    return work


from hub_server import hub  # noqa: E402, F401 - the loopback Hub fixture, defined in hub_server.py
