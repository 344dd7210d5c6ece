"""The streaming conversion engine: a family's plan, validated, then run tensor by tensor.

``make_plan`` asks the detected family component for its ops and checks them against the
checkpoint (every key consumed exactly once, no output written twice) before anything is
written; ``stream`` then reads one op's inputs at a time, applies the op, casts, and yields the
outputs in the order the writers laid out their headers.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from weightsmith.errors import ConversionError, DetectionError, UsageError
from weightsmith.families import Detection, PlanOptions, detect, get_component
from weightsmith.families.ops import Op, Spec
from weightsmith.io.base import Checkpoint

if TYPE_CHECKING:
    import torch

# The layouts the writers know how to lay out (which components have which: Component.layouts).
DIFFUSERS, ORIGINAL, SAT = "diffusers", "original", "sat"

# --dtype names to torch's names: torch is imported only for a cast (planning from headers and a
# GGUF job's numpy path run without it).
DTYPES: dict[str, str | None] = {"keep": None, "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
CASTABLE_NAMES = ("float32", "float16", "bfloat16", "float64")


def __getattr__(name: str) -> Any:
    if name == "CASTABLE":  # the dtypes a cast applies to, as torch dtypes (imports torch)
        import torch

        return {getattr(torch, n) for n in CASTABLE_NAMES}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_dtype(name: str) -> torch.dtype | None:
    if name not in DTYPES:
        raise UsageError(f"unknown --dtype {name!r}", hint=f"choose one of {', '.join(DTYPES)}")
    if DTYPES[name] is None:
        return None
    import torch

    return getattr(torch, DTYPES[name])


def first_keys(keys: Any, n: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


@dataclass
class Plan:
    """A validated conversion: source, what it is, the ops and the output specs in write order."""

    source: Checkpoint
    detection: Detection
    target_layout: str
    ops: list[Op]
    specs: list[Spec]
    cast: torch.dtype | None = None
    source_config: dict[str, Any] | None = None
    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def spec_tuples(self) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        return [(s.name, s.shape, s.dtype) for s in self.specs]

    def output_infos(self) -> dict[str, Any]:
        from weightsmith.io.base import TensorInfo, dtype_name

        return {
            s.name: TensorInfo(s.name, s.shape, s.dtype, dtype_name(s.dtype), s.nbytes) for s in self.specs
        }


def resolve_detection(ckpt: Checkpoint, family: str | None = None) -> Detection:
    """Detect what ``ckpt`` is; with ``family`` forced, insist that family recognises it."""
    if family:
        hits = [c.detect(ckpt.infos, ckpt.config) for c in _components_of(family)]
        hits = [h for h in hits if h is not None]
        if not hits:
            found = detect(ckpt.infos, ckpt.config)
            seen = (
                f"it looks like {found.family} {found.component}"
                if found
                else "its keys match no known family"
            )
            raise DetectionError(
                f"{ckpt.path} is not a {family} checkpoint: {seen}",
                hint="drop --family to let weightsmith detect it",
            )
        return hits[0]
    det = detect(ckpt.infos, ckpt.config)
    if det is None:
        sample = first_keys(ckpt.keys())
        raise DetectionError(
            f"{ckpt.path}: keys match no known family (first keys: {sample})",
            hint="check the file is a CogVideoX, Wan or Sana transformer or VAE, or pass --family",
        )
    return det


def _components_of(family: str) -> list:
    from weightsmith.families import components, families

    if family not in families():
        raise UsageError(f"unknown family {family!r}", hint=f"choose one of {', '.join(families())}")
    return [c for c in components() if c.family == family]


def make_plan(
    ckpt: Checkpoint,
    target_layout: str,
    *,
    family: str | None = None,
    dtype: str = "keep",
    prefix: str = "",
    detection: Detection | None = None,
    config: Mapping[str, Any] | None = None,
    dtype_names: bool = False,
) -> Plan:
    """Build and validate the plan that turns ``ckpt`` into ``target_layout``. ``dtype_names``:
    the specs carry dtype names (``"BF16"``), not torch dtypes, for a job that needs only names
    and shapes (a GGUF job's numpy path plans without torch); no cast then."""
    det = detection or resolve_detection(ckpt, family)
    comp = get_component(det.family, det.component)
    target_layout = comp.layout_aliases.get(target_layout, target_layout)
    if target_layout not in comp.layouts:
        raise UsageError(
            f"{det.family} {det.component} has no {target_layout!r} layout",
            hint=f"choose one of {', '.join(comp.layouts)}",
        )
    cast = parse_dtype(dtype)
    castable = __getattr__("CASTABLE") if cast is not None else set()
    infos = ckpt.infos
    source_config = dict(config or ckpt.config or {}) or None
    ops = comp.plan(det, infos, target_layout, PlanOptions(prefix=prefix, config=source_config))
    consumed: Counter = Counter(k for op in ops for k in op.inputs)
    unknown = [k for k in consumed if k not in infos]
    if unknown:
        raise ConversionError(
            f"plan reads keys the checkpoint lacks: {first_keys(unknown)}",
            hint="this is a bug in the family's conversion plan: rerun with --debug and report it",
        )
    twice = [k for k, n in consumed.items() if n > 1]
    left = [k for k in infos if k not in consumed]
    if twice or left:
        raise ConversionError(
            f"{det.family} {det.component}: keys not accounted for: {first_keys(left or twice)}",
            hint="the checkpoint has keys this family does not know; check --family or report it",
        )
    ops = sorted(ops, key=lambda op: (op.outputs[0] if op.outputs else "", op.inputs))
    specs: list[Spec] = []
    counts: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    for op in ops:
        ins = [
            Spec(k, infos[k].shape, infos[k].dtype_name if dtype_names else infos[k].dtype) for k in op.inputs
        ]
        outs = op.out_specs(ins)
        if cast is not None:
            outs = [Spec(s.name, s.shape, cast) if s.dtype in castable else s for s in outs]
        specs.extend(outs)
        counts[op.kind] += 1
        if len(examples[op.kind]) < 3:
            examples[op.kind].append(f"{', '.join(op.inputs) or '-'} -> {', '.join(op.outputs) or '-'}")
    names = Counter(s.name for s in specs)
    dup = [k for k, n in names.items() if n > 1]
    if dup:
        raise ConversionError(
            f"plan writes keys twice: {first_keys(dup)}",
            hint="the checkpoint may mix two layouts (check it with `weightsmith inspect`); otherwise rerun with --debug and report it",
        )
    return Plan(ckpt, det, target_layout, ops, specs, cast, source_config, counts, dict(examples))


def stream(
    plan: Plan, progress: bool = False, read: Callable[[str], Any] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield output tensors in ``plan.specs`` order, reading one op's inputs at a time.
    ``read``: how an input is read (default ``plan.source.get``, torch tensors; a GGUF job's
    numpy path passes ``plan.source.read_array``, which every op with ``arrays`` takes)."""
    from weightsmith.progress import bar

    read = read or plan.source.get

    it = iter(plan.specs)
    castable = __getattr__("CASTABLE") if plan.cast is not None else set()
    with bar(total=len(plan.specs), desc="convert", unit="tensor", enabled=progress) as pbar:
        for op in plan.ops:
            if not op.outputs:
                continue
            outs = op.apply([read(k) for k in op.inputs])
            if len(outs) != len(op.outputs):
                raise ConversionError(
                    f"a {op.kind} step made {len(outs)} tensors for {len(op.outputs)} outputs "
                    f"({first_keys(op.outputs)})",
                    hint="this is a bug in weightsmith's plan for this model; rerun with --debug and report it",
                )
            for t in outs:
                spec = next(it, None)
                if spec is None or tuple(t.shape) != tuple(spec.shape):
                    planned = f"the planned {list(spec.shape)}" if spec else "no more tensors planned"
                    raise ConversionError(
                        f"converting {first_keys(op.inputs)} gave a tensor of shape {list(t.shape)}, "
                        f"not {planned}",
                        hint="the source's tensors do not match what its header declares; check the file",
                    )
                if plan.cast is not None and t.dtype in castable and t.dtype != spec.dtype:
                    t = t.to(spec.dtype)
                yield spec.name, t
                pbar.update(1)


def summary_lines(plan: Plan) -> list[str]:
    """A short account of what the conversion did (renamed, split, fused, dropped, derived)."""
    d = plan.detection
    lines = [
        f"{d.family} {d.component} {d.variant or '(variant unknown)'}: {d.layout} -> {plan.target_layout}, "
        f"{len(plan.source.infos)} tensors in, {len(plan.specs)} out"
        + (f", cast to {str(plan.cast).removeprefix('torch.')}" if plan.cast else "")
    ]
    for kind in sorted(plan.counts):
        ex = plan.examples.get(kind, [])
        lines.append(f"  {kind:10s} {plan.counts[kind]:5d}   e.g. {ex[0] if ex else ''}")
    return lines
