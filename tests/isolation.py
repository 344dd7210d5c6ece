"""Autouse fixtures that keep a test folder's runs off the user's cache and on one torch thread.

A conftest opts in with ``from isolation import one_thread, private_cache  # noqa: F401``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """torch on one thread inside the block: tiny models run faster so, much faster on a busy
    machine (no spinning workers)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Runs without --cache-dir use a throwaway cache, never the user's ~/.cache."""
    monkeypatch.setenv("WEIGHTSMITH_CACHE", str(tmp_path_factory.getbasetemp() / "ws-cache"))


@pytest.fixture(autouse=True)
def one_thread():
    """Every test on one torch thread (see ``single_thread``)."""
    with single_thread():
        yield
