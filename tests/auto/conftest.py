"""A tiny Wan transformer (wide fixture) shared by the auto: tests, a private cache, one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from weightsmith.verify.tiny import wide_transformer

# Generation settings of every auto: test: the tiny size, 2 steps, short seeded prompts.
GEN = [
    "--steps",
    "2",
    "--height",
    "32",
    "--width",
    "32",
    "--frames",
    "5",
    "--text-len",
    "8",
    "--device",
    "cpu",
]
# Every GGUF tensor but four of block 0 kept, so the search has few layers to cost.
KEEP_GGUF = ["--keep", "blocks.*.cross_attn.*", "--keep", "blocks.1.*", "--keep", "blocks.0.self_attn.[qk].*"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path_factory.getbasetemp() / "ws-cache"))


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def wan_transformer(tmp_path_factory) -> Path:
    """The verification-sized Wan 2.1 transformer as a Diffusers component folder (no VAE:
    latents are scored)."""
    folder = tmp_path_factory.mktemp("auto") / "transformer"
    wide_transformer("wan", "2.1-t2v").save_pretrained(str(folder))
    return folder
