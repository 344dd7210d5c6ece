"""A tiny Wan transformer (wide fixture) shared by the auto: tests, a private cache, one thread."""

from __future__ import annotations

from pathlib import Path

import pytest
from autokit import GEN, KEEP_GGUF  # noqa: F401 - re-exported for the tests
from isolation import one_thread, private_cache  # noqa: F401

from weightsmith.verify.tiny import wide_transformer


@pytest.fixture(scope="session")
def wan_transformer(tmp_path_factory) -> Path:
    """The verification-sized Wan 2.1 transformer as a Diffusers component folder (no VAE:
    latents are scored)."""
    folder = tmp_path_factory.mktemp("auto") / "transformer"
    wide_transformer("wan", "2.1-t2v").save_pretrained(str(folder))
    return folder
