"""Baseline generations cached on disk, so a matrix of candidates runs the baseline once.

An entry is keyed by the sha256 of the baseline's file contents (transformer experts and VAE), the
generation settings, the scheduler, the prompt and image, the seed, and the torch/diffusers
versions and device kind that produced the numbers. It holds the final latents, every step's
latents and the decoded frames exactly (float32 safetensors), so a cached baseline scores
candidates exactly as a fresh one does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from weightsmith.io.atomic import atomic_file
from weightsmith.verify.pipelines import Generation

SCHEMA = "weightsmith.verify-cache/1"


def default_cache_dir() -> Path:
    """``$WEIGHTSMITH_CACHE/verify``, else ``$XDG_CACHE_HOME/weightsmith/verify`` (``~/.cache``)."""
    from weightsmith.io.cache_paths import cache_root

    return cache_root() / "verify"


def cache_key(material: dict[str, Any]) -> str:
    """A stable hex key for JSON-able ``material``."""
    import diffusers

    full = {"schema": SCHEMA, "torch": torch.__version__, "diffusers": diffusers.__version__, **material}
    blob = json.dumps(full, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


class BaselineCache:
    """A folder of ``<key>.safetensors`` generations and a memo of file digests."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def digests(self) -> dict[str, str]:
        """File-content digests memoised by (path, size, mtime)."""
        if self.folder is None:
            return {}
        p = self.folder / "digests.json"
        try:
            return json.loads(p.read_text()) if p.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def save_digests(self, memo: dict[str, str]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.folder / "digests.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(memo, indent=0, sort_keys=True))

    def get(self, key: str) -> Generation | None:
        if self.folder is None:
            return None
        path = self.folder / f"{key}.safetensors"
        if not path.is_file():
            self.misses += 1
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                n = int(meta["steps"])
                gen = Generation(
                    f.get_tensor("latents"),
                    [f.get_tensor(f"step.{i}") for i in range(n)],
                    f.get_tensor("frames") if "frames" in f.keys() else None,
                    float(meta["seconds"]),
                    None,
                    json.loads(meta.get("notes", "[]")),
                )
        except Exception:  # noqa: BLE001 - a damaged entry is a miss, regenerated and overwritten
            self.misses += 1
            return None
        self.hits += 1
        return gen

    def put(self, key: str, gen: Generation, about: dict[str, Any]) -> None:
        if self.folder is None or not gen.finite:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {"latents": gen.latents.clone().contiguous()}
        tensors.update({f"step.{i}": s.contiguous() for i, s in enumerate(gen.steps)})
        if gen.frames is not None:
            tensors["frames"] = gen.frames.contiguous()
        meta = {
            "schema": SCHEMA,
            "steps": str(len(gen.steps)),
            "seconds": repr(gen.seconds),
            "notes": json.dumps(gen.notes),
            "about": json.dumps(about, sort_keys=True, default=str),
        }
        with atomic_file(self.folder / f"{key}.safetensors", overwrite=True) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
