"""Tiny random-weight models of every family, component and variant, saved in every container.

Built from the real diffusers classes (each family's ``tiny_model``) and converted to the other
layouts through the same family plans a full-size model goes through. Tests and the demo use
these; nothing is downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from weightsmith.convert.engine import DIFFUSERS, ORIGINAL, SAT
from weightsmith.errors import ConversionError, UsageError
from weightsmith.families import Component, PlanOptions, components, get_component
from weightsmith.families.base import DIFFUSION_PREFIX
from weightsmith.families.ops import run_in_memory
from weightsmith.families.textenc import LLAMACPP
from weightsmith.io.base import infos_from_state_dict
from weightsmith.io.writers import write_diffusers_component, write_safetensors, write_sat, write_torch_file

# Containers each layout is saved in. "prefixed" is a single safetensors file whose keys carry
# ComfyUI's ``model.diffusion_model.`` prefix.
CONTAINERS = {
    DIFFUSERS: ("diffusers-folder", "safetensors", "safetensors-sharded", "torch", "gguf"),
    ORIGINAL: ("safetensors", "prefixed", "torch", "safetensors-sharded", "gguf"),
    SAT: ("sat",),
    LLAMACPP: ("safetensors", "gguf"),
}


@dataclass(frozen=True)
class Fixture:
    family: str
    component: str
    variant: str
    layout: str
    container: str

    @property
    def name(self) -> str:
        return f"{self.family}-{self.component}-{self.variant}-{self.layout}-{self.container}"


def fixtures() -> Iterator[Fixture]:
    """Every (family, component, variant, layout, container) the tiny models are saved in."""
    for comp in components():
        for variant in comp.variants:
            for layout in comp.layouts:
                containers = CONTAINERS.get(layout, ("safetensors",))
                if layout == SAT and comp.component != "transformer":
                    containers = ("torch",)
                for container in containers:
                    yield Fixture(comp.family, comp.component, variant, layout, container)


@lru_cache(maxsize=64)
def _diffusers_state(family: str, component: str, variant: str, seed: int) -> tuple[dict, dict]:
    comp = get_component(family, component)
    model = comp.tiny_model(variant, seed)
    state = {k: v.detach().clone().contiguous() for k, v in comp.checkpoint_state(model).items()}
    config = comp.model_config(model)
    return state, config


def tiny_state(
    family: str, component: str, variant: str, layout: str, seed: int = 0, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tiny model's weights in ``layout`` and its Diffusers config."""
    state, config = _diffusers_state(family, component, variant, seed)
    state = dict(state)
    if layout == DIFFUSERS and not prefix:
        return state, dict(config)
    comp = get_component(family, component)
    infos = infos_from_state_dict(state)
    det = comp.detect(infos, config)
    if det is None or det.variant != variant:
        raise ConversionError(
            f"the tiny {family} {component} {variant} detects as {det}",
            hint="the family's tiny_config and detect disagree; fix the family",
        )
    ops = comp.plan(det, infos, layout, PlanOptions(prefix=prefix, config=config))
    return run_in_memory(ops, state), dict(config)


def _specs(state: Mapping[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(k, tuple(v.shape), v.dtype) for k, v in sorted(state.items())]


def _items(state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    for k in sorted(state):
        yield k, state[k]


def save_fixture(fx: Fixture, folder: str | Path, seed: int = 0) -> Path:
    """Write one tiny fixture under ``folder``; returns the path to hand to ``open_checkpoint``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = DIFFUSION_PREFIX if fx.container == "prefixed" else ""
    state, config = tiny_state(fx.family, fx.component, fx.variant, fx.layout, seed, prefix)
    comp = get_component(fx.family, fx.component)
    base = folder / fx.name
    if fx.container == "diffusers-folder":
        return _write_folder(comp, base, fx.variant, state, config)
    if fx.container in ("safetensors", "prefixed"):
        return write_safetensors(
            base.with_suffix(".safetensors"), _specs(state), _items(state), overwrite=True
        )
    if fx.container == "safetensors-sharded":
        total = sum(v.numel() * v.element_size() for v in state.values())
        write_diffusers_component(
            base,
            _specs(state),
            _items(state),
            None,
            max(total // 3, 1),
            overwrite=True,
            stem=comp.weights_stem,
        )
        return base / f"{comp.weights_stem}.safetensors.index.json"
    if fx.container == "torch":
        wrap = comp.torch_wrap.get(fx.layout)
        return write_torch_file(
            base.with_suffix(".pt"), _specs(state), _items(state), overwrite=True, wrap=wrap
        )
    if fx.container == "sat":
        # As `convert --to sat` writes it: with the Diffusers config beside the weights, since a
        # tiny 2B and 5B differ in no weight.
        return write_sat(base, _specs(state), _items(state), overwrite=True, diffusers_config=config)
    if fx.container == "gguf":
        return _write_gguf_fixture(base.with_suffix(".gguf"), state, _gguf_arch(comp))
    raise UsageError(f"unknown container {fx.container}", hint=f"one of {', '.join(CONTAINERS[fx.layout])}")


def save_export_fixture(family: str, component: str, variant: str, folder: str | Path, seed: int = 0) -> Path:
    """The model the ONNX export tests trace (``Component.tiny_export_config``: the tiny one, cut
    to the op kinds its graph needs) as a Diffusers component folder under ``folder``."""
    comp = get_component(family, component)
    model = comp.tiny_model(variant, seed, config=comp.tiny_export_config(variant))
    state = {k: v.detach().contiguous() for k, v in comp.checkpoint_state(model).items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return _write_folder(
        comp, folder / f"{family}-{component}-{variant}-export", variant, state, comp.model_config(model)
    )


def _write_folder(comp: Component, base: Path, variant: str, state: dict, config: Mapping[str, Any]) -> Path:
    """``state`` as a Diffusers component folder at ``base`` with the config a loader expects."""
    cfg = comp.folder_config(variant, config)
    return write_diffusers_component(
        base, _specs(state), _items(state), cfg, overwrite=True, stem=comp.weights_stem
    )


def _gguf_arch(comp: Component) -> str:
    """``general.architecture`` of a plain GGUF fixture: the component's, else its family name."""
    return comp.quant.gguf_arch or comp.family


def _write_gguf_fixture(path: Path, state: Mapping[str, torch.Tensor], arch: str) -> Path:
    """A plain (F32/F16) GGUF of the state dict, 5-D tensors included as gguf-py writes them."""
    import gguf

    if path.exists():
        path.unlink()
    w = gguf.GGUFWriter(str(path), arch)
    for name in sorted(state):
        t = state[name].detach()
        w.add_tensor(name, (t.float() if t.dtype == torch.bfloat16 else t).contiguous().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def save_diffusers_config(family: str, component: str, variant: str, folder: str | Path) -> Path:
    """A local Diffusers folder (config.json + weights) for ``from_single_file(config=...)`` tests."""
    comp = get_component(family, component)
    model = comp.tiny_model(variant, 0)
    model.save_pretrained(str(folder))
    cfg = json.loads((Path(folder) / "config.json").read_text())
    if cfg["_class_name"] != comp.class_name(variant):
        raise ConversionError(
            f"the tiny {family} {component} {variant} saved as {cfg['_class_name']}",
            hint=f"the family's class_name says {comp.class_name(variant)}; fix the family",
        )
    return Path(folder)
