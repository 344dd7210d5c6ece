"""A tiny Wan transformer (wide fixture) shared by the auto: tests, a private cache, one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from autokit import GEN, KEEP_GGUF  # noqa: F401 - re-exported for the tests

from weightsmith.verify.tiny import wide_transformer


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
