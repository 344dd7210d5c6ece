"""What a family module declares, and the registry that finds it.

A family (CogVideoX, Wan, Sana) is one module under ``weightsmith/families/`` that registers one
``Component`` subclass per model component it knows (transformer, VAE). A component declares
its layouts and variants, tells itself apart from others by key names and shapes (``detect``),
builds the conversion plan between any two of its layouts (``plan``), derives a Diffusers
``config.json`` from shapes, and builds a tiny random-weight instance of the real diffusers
class for tests. Adding a family means registering components, never editing a chain of ifs.
"""

from __future__ import annotations

import fnmatch
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from weightsmith.errors import ConversionError, UsageError
from weightsmith.families.generation import Generation
from weightsmith.families.inputs import ForwardInputs, InputSpec
from weightsmith.families.ops import Op
from weightsmith.families.tiny_init import FIXTURE, SIGNAL, TinyInit, build_tiny
from weightsmith.io.base import TensorInfo

if TYPE_CHECKING:
    import torch

# The prefix ComfyUI-style single files (and SAT) put before DiT keys.
DIFFUSION_PREFIX = "model.diffusion_model."
SHOW = 5  # how many offending keys an error message names


def first_few(names: Iterable[str], n: int = SHOW) -> str:
    """The first ``n`` names (sorted, quoted) and a count of the rest, for one-line errors."""
    ns = sorted(set(names))
    shown = ", ".join(repr(k) for k in ns[:n])
    return shown + (f" and {len(ns) - n} more" if len(ns) > n else "")


@dataclass(frozen=True)
class Detection:
    """What a checkpoint is: family, component, layout and variant.

    ``variant`` is None when the weights cannot tell (the report then says why in ``notes``).
    ``prefix`` is the key prefix found in front of every model key (``""`` when none).
    """

    family: str
    component: str
    layout: str
    variant: str | None
    prefix: str = ""
    notes: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "component": self.component,
            "layout": self.layout,
            "variant": self.variant,
            "prefix": self.prefix,
            "notes": list(self.notes),
            "facts": dict(self.facts),
        }


@dataclass(frozen=True)
class PlanOptions:
    """Options a family honours when planning a conversion.

    ``prefix``: key prefix to put in front of every output key (original layout only, e.g.
    ``model.diffusion_model.`` for ComfyUI). ``config``: the source's Diffusers config when known,
    which some reverse conversions need (Sana's positional table size, for instance).
    """

    prefix: str = ""
    config: Mapping[str, Any] | None = None


# The default of ``Component.plan``'s ``options`` (frozen, so one shared instance is safe).
NO_OPTIONS = PlanOptions()


class KeyView:
    """The keys of a checkpoint with one prefix stripped: the question-asking side of detection."""

    def __init__(self, infos: Mapping[str, TensorInfo], prefix: str = "") -> None:
        self.prefix = prefix
        self.infos = {k[len(prefix) :]: v for k, v in infos.items() if k.startswith(prefix)}

    def has(self, *keys: str) -> bool:
        return all(k in self.infos for k in keys)

    def any(self, *keys: str) -> bool:
        return any(k in self.infos for k in keys)

    def shape(self, key: str) -> tuple[int, ...] | None:
        info = self.infos.get(key)
        return None if info is None else info.shape

    def matching(self, pattern: str) -> list[str]:
        rx = re.compile(pattern)
        return [k for k in self.infos if rx.fullmatch(k)]

    def count_indices(self, pattern: str) -> int:
        """How many distinct values the one ``(\\d+)`` group in ``pattern`` takes (layer counts)."""
        rx = re.compile(pattern)
        seen = set()
        for k in self.infos:
            m = rx.match(k)
            if m:
                seen.add(int(m.group(1)))
        return len(seen)

    def __len__(self) -> int:
        return len(self.infos)


@dataclass(frozen=True)
class KeepRule:
    """A tensor every quantizer keeps in high precision: a glob on its Diffusers name, and why."""

    pattern: str
    reason: str


@dataclass(frozen=True)
class QuantSpec:
    """How a component is quantized, for GGUF and the Linear schemes (int8/fp8/int4) alike.

    ``keep`` is the one keep-in-high-precision policy, in Diffusers names. GGUF files use the
    ``gguf_layout`` names (the published single-file layout); the GGUF tensor classes that
    recipes raise (attention-v, fused qkv, FFN-down) and the kept tensors stored as F32
    (modulation tables) are name patterns in that layout. ``gguf_arch`` is the file's
    ``general.architecture``; None means no GGUF is written for this component.
    """

    keep: tuple[KeepRule, ...] = ()
    blocks: str = r"^(?:blocks|transformer_blocks)\.([0-9]+)\."  # the block stack --keep-blocks counts
    gguf_arch: str | None = None
    gguf_layout: str = "original"
    gguf_v: tuple[str, ...] = ()
    gguf_qkv: tuple[str, ...] = ()
    gguf_ffn_down: tuple[str, ...] = ()
    gguf_f32: tuple[str, ...] = ()
    diffusers_reads_gguf: bool = False  # diffusers' from_single_file loads our GGUF of it
    comfy_fp8: bool = False  # ComfyUI loads a comfy_quant / scaled-fp8 single file of it in ``comfy_layout``
    comfy_refusal: str = "ComfyUI has no native model for it"  # why not, when ``comfy_fp8`` is False
    # The layout of ComfyUI's single files of it when that is not ``gguf_layout``: the names
    # ComfyUI's native model reads (CogVideoX's own; text encoders: transformers' names, where
    # their GGUF files use llama.cpp's). None: ``gguf_layout``.
    comfy_layout: str | None = None
    # False: int weights go to compressed-tensors as ``int-quantized`` (an int8 ``.weight``), not
    # ``pack-quantized``, because the model class's own code reads ``Linear.weight``.
    ct_packed: bool = True
    # Kept tensors of <= 1024 elements stored as F32 (the DiT rule). False: llama.cpp's rule, only
    # 1-D tensors and norms are F32, other kept tensors F16 (text encoders).
    gguf_small_f32: bool = True

    def keep_reason(self, name: str) -> str | None:
        """Why the tensor of Diffusers name ``name`` stays in high precision, or None."""
        return next((r.reason for r in self.keep if fnmatch.fnmatchcase(name, r.pattern)), None)


class Component(ABC):
    """One model component of one family (e.g. CogVideoX transformer), in all its layouts.

    Everything weightsmith knows about a model lives here or in an object held here: key maps
    and plans, detection, configs, the quantization policy (``quant``), how to run it in its
    diffusers pipeline for verification (``generation``), how LoRA files name its modules
    (``lora``) and its tiny test configurations (``tiny_config``). The rest of the code asks.
    """

    family: ClassVar[str]
    component: ClassVar[str]  # "transformer" or "vae"
    layouts: ClassVar[tuple[str, ...]]  # e.g. ("sat", "diffusers") or ("original", "diffusers")
    # Other names of a layout (``convert --to ALIAS``): a text encoder's diffusers layout is
    # transformers' own names, so ``transformers`` says the same.
    layout_aliases: ClassVar[Mapping[str, str]] = {}
    # Layouts whose round trip is not bit-exact by their own convention, with why (tests compare
    # those to float rounding); every other layout round-trips bit for bit.
    inexact_layouts: ClassVar[Mapping[str, str]] = {}
    variants: ClassVar[tuple[str, ...]]
    diffusers_class: ClassVar[str]  # name in the diffusers package
    label: ClassVar[str | None] = None  # how messages name it ("Wan transformer"); None: family + component
    quant: ClassVar[QuantSpec] = QuantSpec()
    # The verify adapter (weightsmith.families.generation); None: not verifiable on its own.
    generation: ClassVar[Generation | None] = None
    # The LoRA naming adapter (weightsmith.families.lora.ComponentLora); None: LoRA files for this
    # component are not read.
    lora: ClassVar[Any] = None
    # Per layout, the key the family's reference code wraps its weights under in a torch file
    # (e.g. {"original": "state_dict"}); a layout not named is saved as a bare state dict.
    torch_wrap: ClassVar[Mapping[str, str]] = {}
    # The __init__ parameters of the diffusers classes, as data (``<family>/config_fields.py``),
    # so that config checks need not import diffusers; None: read them from the classes.
    config_fields: ClassVar[Any] = None
    # A pipeline holding this transformer twice (high- and low-noise experts) is its own variant:
    # one expert's variant -> the pipeline's. None: the family has no two-expert pipelines.
    expert_pairs: ClassVar[Mapping[str, str] | None] = None
    # The forward-input adapter (weightsmith.families.inputs.ForwardInputs); None: not described.
    inputs: ClassVar[ForwardInputs | None] = None
    # How it is exported to ONNX (weightsmith.families.export.ExportAdapter); None: not exportable.
    export: ClassVar[Any] = None
    # How a tiny model's random weights are drawn (weightsmith.families.tiny_init); wide models use SIGNAL.
    tiny_init: ClassVar[TinyInit] = FIXTURE
    # The weights file stem of a component folder in the target layout (transformers uses "model").
    weights_stem: ClassVar[str] = "diffusion_pytorch_model"

    @abstractmethod
    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """This component's Detection if the keys are its own, else None. Never guesses a variant."""

    @abstractmethod
    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Ops that turn ``infos`` (in ``detection.layout``, with ``detection.prefix``) into ``target_layout``.

        Every input key must be consumed by one op; unknown input keys raise ConversionError
        naming the first few.
        """

    @abstractmethod
    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """The diffusers class's config (``__init__`` kwargs) that fits these diffusers-layout shapes."""

    def check_plan(self, detection: Detection, target_layout: str, options: PlanOptions = NO_OPTIONS) -> None:
        """The checks every ``plan`` opens with: layouts and detection are this component's own,
        and an output key prefix is a dotted path. A failure is a usage mistake, not a bad file."""
        choose = f"choose one of: {', '.join(self.layouts)}"
        if target_layout not in self.layouts:
            raise UsageError(f"the {self.title()} has no layout {target_layout!r}", hint=choose)
        if (detection.family, detection.component) != (self.family, self.component):
            raise UsageError(
                f"detection is {detection.family}/{detection.component}, not {self.family}/{self.component}",
                hint="plan with the component that detected the checkpoint",
            )
        if detection.layout not in self.layouts:
            raise UsageError(f"the {self.title()} has no layout {detection.layout!r}", hint=choose)
        if options.prefix and not options.prefix.endswith("."):
            raise UsageError(
                f"key prefix {options.prefix!r} must end with '.'", hint="e.g. model.diffusion_model."
            )

    def check_keys(
        self,
        what: str,
        unknown: Iterable[str] = (),
        missing: Iterable[str] = (),
        hint: str | None = None,
    ) -> None:
        """ConversionError naming the first few keys no rule knows, else the first few a complete
        ``what`` (e.g. "Wan transformer (original layout)") needs but lacks: nothing is dropped or
        invented silently. ``hint`` replaces the default advice."""
        unknown, missing = set(unknown), set(missing)
        if unknown:
            raise ConversionError(
                f"{len(unknown)} unexpected key(s), not part of a {what}: {first_few(unknown)}",
                hint=hint
                or "the checkpoint holds tensors this conversion does not know; check --family or strip them",
            )
        if missing:
            raise ConversionError(
                f"{len(missing)} key(s) a {what} needs are missing: {first_few(missing)}",
                hint=hint or "the checkpoint is incomplete (a shard missing?) or not the model it looks like",
            )

    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """The diffusers config of the tiny ``variant``; ``wide``: Linear rows of 256 so every GGUF
        K-type applies (verification and quantization tests)."""
        raise UsageError(
            f"{self.family}/{self.component} declares no tiny configs",
            hint="override Component.tiny_config to build tiny test models of it",
        )

    def tiny_model(
        self, variant: str, seed: int = 0, wide: bool = False, config: Mapping[str, Any] | None = None
    ) -> torch.nn.Module:
        """A tiny random-weight instance of the real diffusers class shaped like ``variant``.

        Built from ``tiny_config(variant, wide)`` (or ``config``, e.g. ``tiny_export_config``);
        weights drawn with ``tiny_init`` (``SIGNAL`` when ``wide``: weights that carry a signal
        through the blocks, as verification needs).
        """
        cfg = self.tiny_config(variant, wide) if config is None else dict(config)
        return build_tiny(
            lambda **kw: self.instantiate(variant, kw), cfg, seed, SIGNAL if wide else self.tiny_init
        )

    def tiny_export_config(self, variant: str) -> dict[str, Any]:
        """The tiny ``variant`` the ONNX export tests trace: ``tiny_config`` as the component's
        export adapter cuts it (``ExportAdapter.test_config``; tracing time follows node count)."""
        tiny = self.tiny_config(variant)
        return tiny if self.export is None else self.export.test_config(tiny)

    # How the class is built, configured and saved. Diffusers classes take their config as keyword
    # arguments; a component whose class is another library's (a transformers text encoder)
    # overrides these five and nothing else needs to know.
    def instantiate(self, variant: str | None, config: Mapping[str, Any]) -> torch.nn.Module:
        """An instance of the class for ``variant`` built from a config (``_`` keys left out)."""
        return self.model_class(variant)(**{k: v for k, v in config.items() if not k.startswith("_")})

    def model_config(self, model: torch.nn.Module) -> dict[str, Any]:
        """The config a model was built from, without bookkeeping (``_``) keys."""
        return {k: v for k, v in dict(model.config).items() if not k.startswith("_")}

    def checkpoint_state(self, model: torch.nn.Module, keep_vars: bool = False) -> dict[str, Any]:
        """The tensors a checkpoint of ``model`` holds (a tied alias is saved once)."""
        return model.state_dict(keep_vars=keep_vars)

    def finish(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model just filled from a checkpoint, made whole (e.g. tied weights re-tied)."""
        return model

    def gguf_metadata(
        self, detection: Detection, config: Callable[[], Mapping[str, Any]], source: Any, file_type: int
    ) -> dict[str, Any]:
        """Metadata a GGUF file of this component needs beyond weightsmith's own (``config()``: the
        full config of the model, derived only when asked, since not every layout derives one;
        ``source``: the path of the weights); values may be gguf-py ``GGUFValue`` where the type
        matters."""
        return {}

    def folder_config(
        self, variant: str | None, derived: Mapping[str, Any], source: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The config.json of a component folder: ``derived`` (from shapes) over the config-only
        knobs the ``source`` config has (sample sizes, RoPE lengths...) that the class takes."""
        import inspect as pyinspect

        import diffusers

        params = pyinspect.signature(self.model_class(variant).__init__).parameters
        knobs = {k: v for k, v in (source or {}).items() if k in params and k not in derived}
        return {
            "_class_name": self.class_name(variant),
            "_diffusers_version": diffusers.__version__,
            **knobs,
            **derived,
        }

    def input_specs(self, config: Mapping[str, Any], variant: str) -> list[InputSpec]:
        """The named inputs of the diffusers class's ``forward`` for this config (export, benchmarks
        and tests feed them; see ``weightsmith.families.inputs``)."""
        if self.inputs is None:
            raise UsageError(
                f"the {self.title()} declares no forward inputs",
                hint="give the component an inputs adapter (weightsmith.families.inputs.ForwardInputs)",
            )
        return self.inputs.specs(config, variant)

    def example_sizes(self, config: Mapping[str, Any], variant: str) -> dict[str, int]:
        """Sizes of the dynamic input dimensions that every model of this config accepts."""
        return (self.inputs or ForwardInputs()).sizes(config, variant)

    def export_plan(self, config: Mapping[str, Any], variant: str, part: str) -> Any:
        """The ``ExportPlan`` of ``part`` (``transformer``, ``vae-decoder``, ``vae-encoder``) for this
        config: named inputs and outputs, free dimensions (see ``weightsmith.families.export``)."""
        if self.export is None:
            raise UsageError(
                f"the {self.title()} declares no export",
                hint="give the component an export adapter (weightsmith.families.export.ExportAdapter)",
            )
        return self.export.plan(self, config, variant, part)

    def check_variant(self, variant: str) -> None:
        """UsageError unless ``variant`` is one this component declares."""
        if variant not in self.variants:
            raise UsageError(
                f"unknown {self.title()} variant {variant!r}", hint="one of: " + ", ".join(self.variants)
            )

    def title(self) -> str:
        """How messages name this component, e.g. "Wan transformer"."""
        return self.label or f"{self.family} {self.component}"

    def class_name(self, variant: str | None = None) -> str:
        """The diffusers class for ``variant`` (override where variants use different classes)."""
        return self.diffusers_class

    def model_class(self, variant: str | None = None) -> type:
        import diffusers

        return getattr(diffusers, self.class_name(variant))


# Filled by ``@register``. Importing this module imports the ``weightsmith.families`` package
# first, whose ``__init__`` imports every built-in family, so the registry is complete on use.
_REGISTRY: dict[tuple[str, str], Component] = {}


def register(cls: type[Component]) -> type[Component]:
    """Class decorator: make a component known to detection, conversion and the CLI."""
    key = (cls.family, cls.component)
    if key in _REGISTRY:
        raise UsageError(
            f"component {key} registered twice", hint="each (family, component) registers one class"
        )
    _REGISTRY[key] = cls()
    return cls


def components() -> list[Component]:
    return list(_REGISTRY.values())


def get_component(family: str, component: str) -> Component:
    try:
        return _REGISTRY[(family, component)]
    except KeyError:
        from weightsmith.errors import UsageError

        known = ", ".join(sorted({f for f, _ in _REGISTRY}))
        raise UsageError(
            f"unknown family/component {family}/{component}", hint=f"known families: {known}"
        ) from None


def families() -> list[str]:
    return sorted({f for f, _ in _REGISTRY})


def detect(infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None) -> Detection | None:
    """The first registered component that recognises these keys, or None (unknown model)."""
    for comp in components():
        det = comp.detect(infos, config)
        if det is not None:
            return det
    return None


def candidate_prefixes(keys: Iterable[str], suffix: str) -> list[str]:
    """Every prefix ("" or ending in ".") under which ``suffix`` appears as a whole dotted tail, shortest first.

    Checkpoints arrive under many wrappers (``model.diffusion_model.``, ``vae.``, ``module.``,
    a pipeline dump's component name); finding the prefix from a marker key beats a fixed list.
    """
    found = {k[: len(k) - len(suffix)] for k in keys if k == suffix or k.endswith("." + suffix)}
    return sorted(found, key=lambda p: (len(p), p))


def find_prefix_all(keys: Iterable[str], markers: Sequence[str]) -> str | None:
    """The shortest prefix under which *every* marker key exists (one marker alone can be a coincidence)."""
    keyset = set(keys)
    for p in candidate_prefixes(keyset, markers[0]):
        if all(p + m in keyset for m in markers):
            return p
    return None


def find_prefix(keys: Iterable[str], marker_keys: Iterable[str], prefixes: Iterable[str]) -> str | None:
    """The prefix (from ``prefixes``, "" included) under which any of ``marker_keys`` appears."""
    keyset = set(keys)
    for p in prefixes:
        if any(p + m in keyset for m in marker_keys):
            return p
    return None
