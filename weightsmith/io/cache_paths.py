"""Where weightsmith keeps what it may reuse across runs (verify's reference outputs, source
digests): one root for every cache, so one setting moves them all."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$WEIGHTSMITH_CACHE``, else ``$XDG_CACHE_HOME/weightsmith`` (``~/.cache/weightsmith``)."""
    root = os.environ.get("WEIGHTSMITH_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "weightsmith"
