"""Tiny pipelines and candidates shared by the verifier tests (built once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from isolation import one_thread, private_cache, single_thread  # noqa: F401
from safetensors.torch import load_file
from verifykit import edited_copy

from weightsmith.verify.tiny import save_tiny_pipeline


@pytest.fixture(scope="session")
def wan(tmp_path_factory) -> dict[str, Path]:
    """A tiny Wan 2.1 T2V pipeline and candidates: identical, converted, broken and quantized."""
    from weightsmith.convert.run import convert
    from weightsmith.quantize.gguf.run import quantize_gguf

    with single_thread():
        return _wan(tmp_path_factory, convert, quantize_gguf)


def _wan(tmp_path_factory, convert, quantize_gguf) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wan")
    pipe = save_tiny_pipeline(root / "pipe", "wan", "2.1-t2v")
    tr = pipe / "transformer"
    out = {"pipe": pipe, "transformer": tr, "vae": pipe / "vae", "root": root, "cache": root / "cache"}
    out["original"] = convert(tr, root / "wan-original.safetensors", "original", progress=False).dst

    def zero(state):
        state["blocks.0.ffn.net.2.weight"].zero_()

    def nan(state):
        state["blocks.1.attn1.to_q.weight"][0, 0] = float("nan")

    def overflow(state):  # finite weights whose activations overflow float32
        state["blocks.0.ffn.net.2.weight"].mul_(1e37)

    out["zeroed"] = edited_copy(tr, root / "zeroed-layer", zero)
    out["nan"] = edited_copy(tr, root / "nan-weight", nan)
    out["overflow"] = edited_copy(tr, root / "overflow", overflow)
    for recipe in ("Q8_0", "Q2_K"):
        out[recipe] = quantize_gguf(tr, root / f"wan-{recipe}.gguf", f"gguf:{recipe}", progress=False).dst
    assert json.loads((pipe / "model_index.json").read_text())["_class_name"] == "WanPipeline"
    assert torch.isnan(
        load_file(str(out["nan"] / "diffusion_pytorch_model.safetensors"))["blocks.1.attn1.to_q.weight"]
    ).any()
    return out
