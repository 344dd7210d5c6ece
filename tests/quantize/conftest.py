"""Fixtures of the quantize hostile-input tests (inputs in hostile_inputs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hostile_inputs import TINY_WAN
from isolation import private_cache, single_thread  # noqa: F401 (private_cache: autouse)


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Diffusers folder of the tiny wide Wan transformer (weights ~N(0, 0.05), seeded)."""
    from weightsmith.families import get_component

    cls = get_component("wan", "transformer").model_class("2.1-t2v")
    torch.manual_seed(0)
    model = cls(**TINY_WAN)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("tiny-wan") / "transformer"
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch single-threaded for the test: each run quantizes a few 256x256 tensors, where
    intra-op threads only cost (on a busy machine, a 10x slower run that trips the time limit)."""
    with single_thread():
        yield
