"""What every text encoder has in common: a transformers class, not a diffusers one.

A video pipeline's text encoder (UMT5 for Wan, T5 for CogVideoX, Gemma-2 for Sana) is a
transformers model saved as ``config.json`` + ``model.safetensors`` inside the pipeline's
``text_encoder/`` folder. Its "diffusers" layout is therefore transformers' own names (what
that folder holds); a family may add another layout (Wan's original ``.pth`` names).

``TextEncoder`` overrides the few ``Component`` hooks where a transformers class differs (it is
built from a config object, its folder config has ``architectures``/``model_type``, a tied
embedding is saved once), and checks a checkpoint's names and shapes against the real class
built on the meta device, so a stray or missing tensor is named before anything is written.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from weightsmith.errors import ConversionError
from weightsmith.families.base import NO_OPTIONS, Component, Detection, PlanOptions, first_few
from weightsmith.families.tiny_init import TinyInit

if TYPE_CHECKING:
    import torch

    from weightsmith.families.ops import Op
    from weightsmith.io.base import TensorInfo

# The layout of llama.cpp's GGUF files (its converter's tensor names), where a text encoder has one.
LLAMACPP = "llamacpp"
# Keys of a transformers config.json that are bookkeeping, not the model's shape or behaviour.
_BOOKKEEPING = frozenset({"architectures", "transformers_version", "dtype", "torch_dtype", "model_type"})

# Text encoders keep their norm scales near one in tests: their outputs feed a transformer
# through cross-attention, and scales near zero would make every prompt embed alike.
TEXT_INIT = TinyInit(matrix=0.05, bias=0.02, scale_center=1.0, scale_std=0.05, buffers="keep")


class TextEncoder(Component):
    """A transformers text encoder registered as a family's ``text_encoder`` component."""

    component = "text_encoder"
    weights_stem = "model"
    layout_aliases = {"transformers": "diffusers"}  # its diffusers layout is transformers' names
    tiny_init = TEXT_INIT
    # A tied alias (name in the model's state dict) -> the tensor it shares, saved once under that name.
    tied: ClassVar[Mapping[str, str]] = {}
    # Released-model values of config knobs the weights cannot show (over the config class's defaults).
    config_defaults: ClassVar[Mapping[str, Any]] = {}

    def model_class(self, variant: str | None = None) -> type:
        import transformers

        return getattr(transformers, self.class_name(variant))

    def config_class(self, variant: str | None = None) -> type:
        return self.model_class(variant).config_class

    def instantiate(self, variant: str | None, config: Mapping[str, Any]) -> torch.nn.Module:
        kw = {k: v for k, v in config.items() if not k.startswith("_") and k not in _BOOKKEEPING}
        cls = self.model_class(variant)
        return cls(self.config_class(variant)(**kw))

    def model_config(self, model: torch.nn.Module) -> dict[str, Any]:
        return {
            k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k not in _BOOKKEEPING
        }

    def checkpoint_state(self, model: torch.nn.Module, keep_vars: bool = False) -> dict[str, Any]:
        state = model.state_dict(keep_vars=keep_vars)
        for alias in self.tied:
            state.pop(alias, None)
        return state

    def finish(self, model: torch.nn.Module) -> torch.nn.Module:
        for alias, src in self.tied.items():
            owner, _, leaf = alias.rpartition(".")
            setattr(model.get_submodule(owner), leaf, model.get_parameter(src))
        return model

    def folder_config(
        self, variant: str | None, derived: Mapping[str, Any], source: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """A transformers config.json: the class's defaults, the released model's knobs, the
        source config's knobs, then what the shapes say; ``architectures`` names the class."""
        knobs = {
            k: v
            for k, v in (source or {}).items()
            if not k.startswith("_") and k not in _BOOKKEEPING and k not in derived
        }
        kw = {**self.config_defaults, **knobs, **derived}
        cfg = self.config_class(variant)(**kw).to_dict()
        for k in ("dtype", "torch_dtype", "_name_or_path"):
            cfg.pop(k, None)
        cfg["architectures"] = [self.class_name(variant)]
        return cfg

    def expected_shapes(self, variant: str | None, config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
        """Names and shapes of the real class built from ``config`` on the meta device."""
        import torch

        with torch.device("meta"):
            model = self.instantiate(variant, {**self.config_defaults, **config})
        return {k: tuple(v.shape) for k, v in self.checkpoint_state(model).items()}

    def check_shapes(
        self, what: str, shapes: Mapping[str, tuple[int, ...]], variant: str | None, config: Mapping[str, Any]
    ) -> None:
        """ConversionError naming keys the class does not have, keys it needs, or wrong shapes
        (``shapes`` in the transformers names)."""
        want = self.expected_shapes(variant, config)
        self.check_keys(what, [k for k in shapes if k not in want], [k for k in want if k not in shapes])
        wrong = [f"{k} {list(shapes[k])} (expected {list(want[k])})" for k in shapes if shapes[k] != want[k]]
        if wrong:
            raise ConversionError(
                f"{len(wrong)} {what} tensor(s) have unexpected shapes: {first_few(wrong, 3)}",
                hint=f"the checkpoint mixes parts of different models or is not a {self.title()}",
            )

    @abstractmethod
    def source_names(
        self, detection: Detection, infos: Mapping[str, TensorInfo]
    ) -> tuple[dict[str, str], list[Op]]:
        """Transformers name -> source key, and ops dropping source keys the class has no name for.
        Keys no rule knows keep their own name, so the shape check names them."""

    @abstractmethod
    def derive_config(
        self, shapes: Mapping[str, tuple[int, ...]], detection: Detection, what: str
    ) -> dict[str, Any]:
        """The config class's kwargs from transformers-name shapes (``what`` names the source in errors)."""

    def checked_names(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> tuple[dict[str, str], list[Op]]:
        """What every text encoder's ``plan`` opens with: the plan checks, then ``source_names``
        checked against the real class's names and shapes for the derived config."""
        self.check_plan(detection, target_layout, options)
        names, drops = self.source_names(detection, infos)
        shapes = {n: tuple(infos[k].shape) for n, k in names.items()}
        what = f"{self.title()} ({detection.layout} layout)"
        self.check_shapes(what, shapes, detection.variant, self.derive_config(shapes, detection, what))
        return names, drops

    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """The config class's kwargs derived from the checkpoint's shapes."""
        names, _ = self.source_names(detection, infos)
        return self.derive_config(
            {n: tuple(infos[k].shape) for n, k in names.items()}, detection, self.title()
        )


def shape_of(shapes: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    """``shapes[key]``, or a ConversionError saying the config cannot be derived without it."""
    try:
        return shapes[key]
    except KeyError:
        raise ConversionError(
            f"cannot derive the {what} config: key {key!r} is missing",
            hint=f"the checkpoint is incomplete or not a {what}",
        ) from None
