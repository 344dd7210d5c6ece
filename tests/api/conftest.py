"""A tiny Wan pipeline and a Q8_0 GGUF of its transformer, built once through the API."""

from __future__ import annotations

from pathlib import Path

import pytest

# What every generation in these tests runs: one step at the tiny pipeline's size.
from apikit import GEN, GEN_ARGS  # noqa: F401 - the tests' settings, re-exported
from isolation import one_thread, private_cache, single_thread  # noqa: F401

import weightsmith


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """pipe/ (a tiny Wan 2.1 T2V pipeline) and q8/model-Q8_0.gguf of its transformer."""
    with single_thread():
        root = tmp_path_factory.mktemp("api")
        pipe = weightsmith.tiny_pipeline(root / "pipe", family="wan")
        (root / "q8").mkdir()
        q8 = weightsmith.quantize(
            pipe / "transformer", root / "q8" / "model-Q8_0.gguf", scheme="gguf:Q8_0"
        ).dst
        return {"root": root, "pipe": pipe, "transformer": pipe / "transformer", "q8": q8}
