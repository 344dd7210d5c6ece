"""Settings and helpers the verifier tests share. A module of its own (not conftest.py), so that
``from verifykit import ...`` finds this file whichever other conftest.py pytest imported first."""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from weightsmith.verify.tiny import TINY_SIZE

# The generation every verifier test runs: 2 steps at the tiny size, short seeded prompts.
GEN = ["--steps", "2", "--height", "32", "--width", "32", "--frames", "5", "--text-len", "8"]


def settings(**kw):
    from weightsmith.verify.settings import GenerationSettings

    h, w, f = TINY_SIZE[kw.pop("family", "wan")]
    base = {"height": h, "width": w, "frames": f, "steps": 2, "text_len": 8}
    base.update(kw)
    return GenerationSettings(**base)


def edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of a Diffusers component folder with ``edit(state)`` applied to its weights."""
    shutil.copytree(src, dst)
    f = dst / "diffusion_pytorch_model.safetensors"
    state = load_file(str(f))
    edit(state)
    save_file(state, str(f))
    return dst
