"""The named inputs of a component's forward pass: what an exporter, a benchmark or a test feeds it.

Each transformer ``Component`` answers ``input_specs(config, variant)`` with one ``InputSpec`` per
argument of its diffusers class's ``forward``: the argument's name, its dimensions (an int where
the config fixes it, a name where it may vary: ``batch``, ``frames``, ``height``, ``width``,
``text``, ``images``, ``image_tokens``; all in latent units), its dtype and how example values
are drawn. ``example_inputs`` turns specs and sizes into tensors; ``example_sizes`` gives sizes
every tiny and released model of the variant accepts. Rotary tables are not inputs: diffusers'
classes compute them from the sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weightsmith.errors import UsageError

if TYPE_CHECKING:
    import torch

DYNAMIC = ("batch", "frames", "height", "width", "text", "images", "image_tokens")


class ForwardInputs:
    """A component's forward-input adapter (held as ``Component.inputs``): ``specs`` names the
    inputs for a config and variant, ``sizes`` gives dynamic sizes every such model accepts."""

    def specs(self, config: Mapping[str, Any], variant: str) -> list[InputSpec]:
        raise NotImplementedError

    def sizes(self, config: Mapping[str, Any], variant: str) -> dict[str, int]:
        return {"batch": 1, "frames": 2, "height": 8, "width": 8, "text": 8, "images": 1, "image_tokens": 4}


@dataclass(frozen=True)
class InputSpec:
    """One forward argument. ``fill``: ``normal`` (noise, embeddings), ``timestep`` (a diffusion
    timestep in [0, 1000)), ``ones`` (an attention mask) or ``value`` (a constant, ``value``)."""

    name: str
    dims: tuple[int | str, ...]
    type_name: str = "float32"  # the torch dtype, by name (declaring inputs needs no torch)
    fill: str = "normal"
    value: float = 0.0
    doc: str = ""

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.type_name)

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        """The concrete shape for ``sizes`` (every named dimension must be given)."""
        out = []
        for d in self.dims:
            if isinstance(d, int):
                out.append(d)
            elif d in sizes:
                out.append(int(sizes[d]))
            else:
                raise UsageError(
                    f"input {self.name!r} needs the size {d!r}",
                    hint=f"give every dynamic size: {', '.join(DYNAMIC)}",
                )
        return tuple(out)


def example_inputs(
    specs: Sequence[InputSpec], sizes: Mapping[str, int], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Tensors for ``specs`` at ``sizes``, drawn from ``seed`` (deterministic on every machine)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for spec in specs:
        shape = spec.shape(sizes)
        if spec.fill == "normal":
            t = torch.randn(shape, generator=g)
        elif spec.fill == "timestep":
            t = torch.randint(0, 1000, shape, generator=g).float()
        elif spec.fill == "ones":
            t = torch.ones(shape)
        elif spec.fill == "value":
            t = torch.full(shape, float(spec.value))
        else:
            raise UsageError(
                f"input {spec.name!r} has an unknown fill {spec.fill!r}",
                hint="use normal, timestep, ones or value",
            )
        out[spec.name] = t.to(spec.dtype)
    return out
