"""Artifact loaders: anything weightsmith reads or writes, back as a torch module of the family's
diffusers class (dequantizing on the fly where the artifact is quantized).

Loaders register a predicate on the opened checkpoint and a load function; the first that claims
it wins, and the plain loader (any layout weightsmith can convert, through the same plan the
converter runs) comes last. The verifier compares artifacts only through ``load_model``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightsmith.errors import ConversionError
from weightsmith.io import Checkpoint, open_single


@dataclass(frozen=True)
class ArtifactLoader:
    name: str
    claims: Callable[[Checkpoint], bool]
    load: Callable[..., nn.Module]


_LOADERS: list[ArtifactLoader] = []
# Modules that register loaders when imported (absent ones are skipped).
_PLUGINS = ("weightsmith.quantize.gguf_loader", "weightsmith.quantize.runtime")


def register_loader(loader: ArtifactLoader) -> None:
    _LOADERS.insert(0, loader)


def _load_plugins() -> None:
    for mod in _PLUGINS:
        if importlib.util.find_spec(mod) is not None:
            importlib.import_module(mod)


def load_model(
    path: str | Path,
    *,
    component: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    config: dict[str, Any] | None = None,
    family: str | None = None,
) -> nn.Module:
    """The diffusers module for a checkpoint of any container, layout or quantization.

    ``dtype`` casts plain floating-point weights (quantized ones keep their storage and compute
    in it); ``config`` supplies a Diffusers config where the checkpoint has none.
    """
    _load_plugins()
    ck = open_single(path, component)
    if config is not None:
        ck.config = dict(config)
    for loader in _LOADERS:
        if loader.claims(ck):
            ck.close()
            return loader.load(ck.path, device=device, dtype=dtype, config=ck.config, family=family)
    return load_plain(ck, device=device, dtype=dtype, family=family)


def load_plain(
    ck: Checkpoint,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    family: str | None = None,
) -> nn.Module:
    """Build the diffusers model with the checkpoint's weights, through the conversion plan to Diffusers."""
    from accelerate import init_empty_weights

    from weightsmith.convert.engine import make_plan, stream
    from weightsmith.convert.run import output_config
    from weightsmith.families import get_component

    try:
        plan = make_plan(ck, "diffusers", family=family)
        cfg = {k: v for k, v in output_config(plan).items() if not k.startswith("_")}
        cls = get_component(plan.detection.family, plan.detection.component).model_class(
            plan.detection.variant
        )
        with init_empty_weights(include_buffers=False):
            model = cls(**cfg)
        state = dict(stream(plan))
    finally:
        ck.close()
    expected = model.state_dict(keep_vars=True)
    missing = [k for k, v in expected.items() if k not in state and v.device.type == "meta"]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ConversionError(
            f"weights do not fit {cls.__name__}: missing {missing[:3]}, unexpected {unexpected[:3]}",
            hint="check that the checkpoint and its config belong together",
        )
    for k, v in state.items():
        ref = expected[k]
        if dtype is not None and v.is_floating_point():
            state[k] = v.to(dtype)
        elif v.dtype != ref.dtype and v.is_floating_point() and ref.is_floating_point():
            state[k] = v  # keep the stored precision (the model was built in float32 on meta)
    model.load_state_dict(state, strict=False, assign=True)
    return model.to(device).eval()
