"""A tiny Wan pipeline and a Q8_0 GGUF of its transformer, built once through the API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import weightsmith

# What every generation in these tests runs: one step at the tiny pipeline's size.
GEN = {"steps": 1, "height": 32, "width": 32, "frames": 5, "text_len": 8}
GEN_ARGS = ["--steps", "1", "--height", "32", "--width", "32", "--frames", "5", "--text-len", "8"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Never the user's ~/.cache."""
    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path_factory.getbasetemp() / "ws-cache"))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """pipe/ (a tiny Wan 2.1 T2V pipeline) and q8/model-Q8_0.gguf of its transformer."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("api")
        pipe = weightsmith.tiny_pipeline(root / "pipe", family="wan")
        (root / "q8").mkdir()
        q8 = weightsmith.quantize(
            pipe / "transformer", root / "q8" / "model-Q8_0.gguf", scheme="gguf:Q8_0"
        ).dst
        return {"root": root, "pipe": pipe, "transformer": pipe / "transformer", "q8": q8}
    finally:
        torch.set_num_threads(n)
