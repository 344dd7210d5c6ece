"""How a component is exported to a graph (ONNX): its parts, named inputs and outputs, which
dimensions may vary, and the patches its diffusers class needs while it is traced.

Each exportable ``Component`` holds an ``ExportAdapter`` as ``Component.export``. A transformer
has one part (``transformer``); a VAE two (``vae-decoder``, ``vae-encoder``). For one config the
adapter answers an ``ExportPlan``: the inputs (``InputSpec``, the same vocabulary as the forward
inputs in ``families/inputs.py``), the outputs, the multiple every dynamic dimension must be of
(patch sizes, VAE strides), the dimensions the architecture fixes, and two sets of sizes (the
traced one and a second one the exporter validates at). ``module`` wraps the diffusers model
into one ``forward(*inputs)`` in plan order; ``patched`` is a context in which family code
replaces what traces badly (never by editing diffusers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from weightsmith.errors import UsageError
from weightsmith.families.inputs import InputSpec

if TYPE_CHECKING:  # torch is imported on use: the registry is read torch-free (start-up)
    import torch
    from torch import nn

TRANSFORMER = "transformer"
VAE_DECODER = "vae-decoder"
VAE_ENCODER = "vae-encoder"
PARTS = (TRANSFORMER, VAE_DECODER, VAE_ENCODER)


@dataclass(frozen=True)
class OutputSpec:
    """One named graph output and its dimensions (names as in the inputs; an int where fixed)."""

    name: str
    dims: tuple[int | str, ...]
    doc: str = ""


@dataclass(frozen=True)
class ExportPlan:
    """What the exporter needs for one part of one config (see the module doc)."""

    part: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    sizes: Mapping[str, int]  # traced at these
    second: Mapping[str, int]  # and validated also at these (other frames/size/text where allowed)
    multiples: Mapping[str, int] = field(default_factory=dict)
    offsets: Mapping[str, int] = field(default_factory=dict)  # size = multiple * k + offset
    static: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()

    def dynamic(self) -> list[str]:
        """The named dimensions left free in the graph, in first-use order."""
        seen: list[str] = []
        for spec in self.inputs:
            for d in spec.dims:
                if isinstance(d, str) and d not in self.static and d not in seen:
                    seen.append(d)
        return seen

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-able data (written beside each graph)."""
        return {
            "part": self.part,
            "inputs": [
                {
                    "name": s.name,
                    "dims": list(s.dims),
                    "dtype": str(s.dtype).removeprefix("torch."),
                    "doc": s.doc,
                }
                for s in self.inputs
            ],
            "outputs": [{"name": o.name, "dims": list(o.dims), "doc": o.doc} for o in self.outputs],
            "dynamic": self.dynamic(),
            "multiples": dict(self.multiples),
            "offsets": dict(self.offsets),
            "static": {d: int(self.sizes[d]) for d in sorted(self.static) if d in self.sizes},
            "notes": list(self.notes),
        }


class ExportAdapter:
    """A component's export description (held as ``Component.export``); see the module doc."""

    parts: tuple[str, ...] = ()

    def plan(self, component: Any, config: Mapping[str, Any], variant: str, part: str) -> ExportPlan:
        """The plan of ``part`` for ``component`` (the registered ``Component``) at ``config``."""
        raise NotImplementedError

    def module(self, model: nn.Module, plan: ExportPlan) -> nn.Module:
        raise NotImplementedError

    @contextlib.contextmanager
    def patched(self, model: nn.Module) -> Iterator[nn.Module]:
        """The model as it is traced (families override to swap what exports badly)."""
        yield model

    def test_config(self, tiny: Mapping[str, Any]) -> dict[str, Any]:
        """The config export tests trace, from the component's tiny one (``tiny_config``).

        Tracing time follows the graph's node count, so a family may cut its tiny model further
        here, keeping every op kind and code path the export of a full-size model takes (stages
        that resample in time and space, attention, the causal cache). Default: ``tiny`` as is.
        """
        return dict(tiny)

    def check_part(self, part: str, title: str) -> None:
        if part not in self.parts:
            raise UsageError(f"the {title} has no part {part!r}", hint="one of: " + ", ".join(self.parts))


def grown(sizes: Mapping[str, int], fixed: frozenset[str], names: Sequence[str]) -> dict[str, int]:
    """``sizes`` with the named, not fixed dimensions doubled (batch becomes 1): a second shape."""
    out = dict(sizes)
    for n in dict.fromkeys(names):
        if n in out and n not in fixed:
            out[n] = 1 if n == "batch" else out[n] * 2
    return out


class TransformerExport(ExportAdapter):
    """A denoiser: the component's forward inputs in, the denoised prediction ``sample`` out.

    Traced with batch 2 (torch specializes a traced size of 1); validated at batch 1 and doubled
    frames/size/text where they are free.
    """

    parts = (TRANSFORMER,)
    output_doc = "the model's prediction (noise, velocity or flow), shaped like hidden_states"

    def extra_inputs(self, config: Mapping[str, Any], variant: str) -> list[InputSpec]:
        """Inputs beyond the forward's (rotary tables a pipeline computes, for instance)."""
        return []

    def multiples(self, config: Mapping[str, Any]) -> dict[str, int]:
        return {}

    def static(self, config: Mapping[str, Any], variant: str) -> frozenset[str]:
        return frozenset()

    def derived_sizes(self, config: Mapping[str, Any], sizes: Mapping[str, int]) -> dict[str, int]:
        """Sizes of dimensions that follow from others (patch counts of rotary tables)."""
        return {}

    def plan(self, component: Any, config: Mapping[str, Any], variant: str, part: str) -> ExportPlan:
        self.check_part(part, component.title())
        inputs = [*component.input_specs(config, variant), *self.extra_inputs(config, variant)]
        static = self.static(config, variant)
        base = {**component.example_sizes(config, variant), "batch": 2}
        names = [d for s in inputs for d in s.dims if isinstance(d, str)]
        second = grown(base, static | {"images", "image_tokens"}, names)
        sizes = {**base, **self.derived_sizes(config, base)}
        second = {**second, **self.derived_sizes(config, second)}
        latent = inputs[0]
        out = OutputSpec("sample", tuple(d for d in latent.dims), self.output_doc)
        if config.get("out_channels") and isinstance(latent.dims[1], int):
            dims = list(latent.dims)
            dims[1] = int(config["out_channels"])
            out = OutputSpec("sample", tuple(dims), self.output_doc)
        elif config.get("out_channels") and isinstance(latent.dims[2], int):
            dims = list(latent.dims)
            dims[2] = int(config["out_channels"])
            out = OutputSpec("sample", tuple(dims), self.output_doc)
        return ExportPlan(
            part=part,
            inputs=tuple(inputs),
            outputs=(out,),
            sizes=sizes,
            second=second,
            multiples=self.multiples(config),
            static=static,
        )

    def call(self, model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**x, return_dict=False)[0]

    def feed(self, named: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        """The graph's inputs from the arguments a pipeline passes the diffusers ``forward`` (the
        inverse of ``call``; an exported graph runs in the pipeline through this)."""
        import torch

        return {k: v for k, v in named.items() if isinstance(v, torch.Tensor)}

    def module(self, model: nn.Module, plan: ExportPlan) -> nn.Module:
        from weightsmith.families.export_module import Forward

        return Forward(model, [s.name for s in plan.inputs], self.call)


@dataclass(frozen=True)
class VAEGeometry:
    """A VAE's latent geometry: channels, spatial and temporal compression, and whether it is video."""

    in_channels: int
    latent_channels: int
    spatial: int
    temporal: int = 1  # video VAEs: 1 + (frames - 1) / temporal latent frames
    video: bool = True
    static_frames: bool = False  # the class loops over frames in Python: the count is traced in


class VAEExport(ExportAdapter):
    """``vae-decoder``: ``latent`` -> ``sample``; ``vae-encoder``: ``sample`` -> ``latent`` (the mean
    of the posterior, what pipelines take with ``argmax`` / ``mode``). Latents are unscaled (the
    pipeline's scaling and shift stay outside, as in diffusers)."""

    parts = (VAE_DECODER, VAE_ENCODER)

    def __init__(self, geometry: Callable[[Mapping[str, Any]], VAEGeometry]) -> None:
        self.geometry = geometry

    def plan(self, component: Any, config: Mapping[str, Any], variant: str, part: str) -> ExportPlan:
        self.check_part(part, component.title())
        g = self.geometry(config)
        axes: tuple[str, ...] = ("frames", "height", "width") if g.video else ("height", "width")
        pixels = ("batch", g.in_channels, *axes)
        latents = ("batch", g.latent_channels, *axes)
        # Latent sizes; the pixel sizes follow from them (frames: 1 + (F - 1) * temporal).
        lat = {"batch": 2, "frames": 2, "height": 4, "width": 4}
        lat2 = {"batch": 1, "frames": 3, "height": 6, "width": 6}
        static = frozenset({"frames"}) if g.video and g.static_frames else frozenset()
        if static:
            lat2["frames"] = lat["frames"]
        mult: dict[str, int] = {}
        offsets: dict[str, int] = {}
        if part == VAE_DECODER:
            sizes, second = lat, lat2
            inp = InputSpec("latent", latents, doc="unscaled latents (divide by the scaling factor first)")
            out = OutputSpec("sample", pixels, "decoded pixels in [-1, 1]")
        else:
            sizes, second = (self.pixels(s, g) for s in (lat, lat2))
            mult = {"height": g.spatial, "width": g.spatial}
            if g.video and g.temporal > 1 and not static:
                mult["frames"], offsets["frames"] = g.temporal, 1
            inp = InputSpec("sample", pixels, doc="pixels in [-1, 1]")
            out = OutputSpec("latent", latents, "posterior mean (unscaled)")
        return ExportPlan(part, (inp,), (out,), sizes, second, mult, offsets, static)

    @staticmethod
    def pixels(lat: Mapping[str, int], g: VAEGeometry) -> dict[str, int]:
        return {
            "batch": lat["batch"],
            "frames": 1 + (lat["frames"] - 1) * g.temporal,
            "height": lat["height"] * g.spatial,
            "width": lat["width"] * g.spatial,
        }

    def module(self, model: nn.Module, plan: ExportPlan) -> nn.Module:
        from weightsmith.families.export_module import Forward

        if plan.part == VAE_DECODER:
            return Forward(model, ["latent"], lambda m, x: m.decode(x["latent"], return_dict=False)[0])
        return Forward(model, ["sample"], _encode_mean)


def _encode_mean(model: nn.Module, x: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model.encode(x["sample"], return_dict=False)[0]
    # A diagonal Gaussian (KL VAEs) or the latent itself (DC-AE); a tensor's own ``mode`` is not it.
    import torch

    return out if isinstance(out, torch.Tensor) else out.mode()
