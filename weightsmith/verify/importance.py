"""`weightsmith imatrix`: importance matrices from reference generations, in llama.cpp's format.

A pre-hook on every ``nn.Linear`` of the transformer adds up ``x**2`` per input column (in float64)
and counts the rows it saw, over every step, seed, prompt and CFG branch. The statistics are then
renamed to the GGUF tensor names ``weightsmith quantize`` writes (original / SAT layout) through
the family's conversion plan; a fused tensor (a fused qkv) takes its parts' shared input
statistics. Written with ``weightsmith.quantize.gguf.imatrix.write_imatrix`` (GGUF imatrix:
``<name>.in_sum2`` and ``<name>.counts``), which ``quantize --imatrix`` and llama.cpp read.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from weightsmith.progress import bar
from weightsmith.verify.models import Baseline, resolve_baseline
from weightsmith.verify.names import column_stats, gguf_tensors
from weightsmith.verify.settings import GenerationSettings


@dataclass
class ImatrixResult:
    path: Path
    tensors: int
    rows: int
    items: int
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary_lines(self) -> list[str]:
        lines = [
            f"imatrix: {self.tensors} tensors from {self.items} generation(s), {self.rows:,} rows per "
            f"tensor on average, in {self.seconds:.1f} s"
        ]
        return lines + [f"  note: {n}" for n in self.notes]


class _SquareSums:
    """Pre-hooks summing squared inputs per column for each Linear module."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}

    def hook_for(self, name: str, mod: nn.Linear) -> Callable[[nn.Module, tuple], None]:
        key, width = f"{name}.weight", mod.in_features

        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x = x.reshape(-1, width).to(torch.float64)
            s = x.pow(2).sum(0).cpu()
            self.sums[key] = self.sums[key] + s if key in self.sums else s
            self.rows[key] = self.rows.get(key, 0) + x.shape[0]

        return hook


@dataclass
class ReferencePass:
    """What a hooked reference run leaves: the baseline, its (first) transformer, the resolved
    settings and how many generations ran."""

    base: Baseline
    transformer: nn.Module
    settings: GenerationSettings
    items: int


def run_linear_hooks(
    model: str,
    settings: GenerationSettings,
    hook_for: Callable[[str, nn.Linear], Callable[[nn.Module, tuple], None]],
    *,
    vae: str | None = None,
    progress: bool = False,
    label: str = "reference",
) -> ReferencePass:
    """Run MODEL's reference generations (no decode) with ``hook_for(name, linear)`` installed as a
    forward pre-hook on every nn.Linear of the transformer: the one way ``imatrix``, calibration
    and the activation probes see what each layer is fed. Hooks are removed whatever happens."""
    from weightsmith.verify.runner import Runner, prepare

    base = resolve_baseline(model, vae)
    sched, settings, device, items = prepare(base, settings)
    runner = Runner(base, sched, settings, device)
    experts = {e: runner.baseline_module(e) for e in base.experts}
    tr = experts["transformer"]
    hooks = [
        mod.register_forward_pre_hook(hook_for(name, mod))
        for name, mod in tr.named_modules()
        if isinstance(mod, nn.Linear)
    ]
    try:
        with bar(len(items), label, "gen", enabled=progress) as tick:
            runner.run(experts, items, tick, decode=False)
    finally:
        for h in hooks:
            h.remove()
    return ReferencePass(base, tr, settings, len(items))


def linear_inputs(
    model: str, settings: GenerationSettings, *, vae: str | None = None, max_rows: int = 4096
) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """Inputs each Linear of MODEL's transformer sees in reference generations (weight name ->
    [rows, in_features], at most ``max_rows`` evenly spaced rows), and the transformer itself.

    For measuring what an importance matrix optimises: a quantized layer's output error on the
    activations it really gets."""
    seen: dict[str, list[torch.Tensor]] = {}

    def hook_for(name: str, mod: nn.Linear) -> Callable[[nn.Module, tuple], None]:
        key, width = f"{name}.weight", mod.in_features

        def hook(_m: nn.Module, args: tuple) -> None:
            seen.setdefault(key, []).append(args[0].detach().reshape(-1, width).float().cpu())

        return hook

    run = run_linear_hooks(model, settings, hook_for, vae=vae)
    out = {}
    for k, parts in seen.items():
        x = torch.cat(parts)
        if x.shape[0] > max_rows:
            x = x[torch.linspace(0, x.shape[0] - 1, max_rows).round().long()]
        out[k] = x
    return out, run.transformer


def collect_imatrix(
    model: str,
    out: str | Path,
    settings: GenerationSettings,
    *,
    vae: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ImatrixResult:
    """Run MODEL's reference generations with hooks and write the importance matrix to ``out``."""
    from weightsmith.quantize.gguf.imatrix import write_imatrix

    t0 = time.perf_counter()
    out = Path(out)
    hooks = _SquareSums()
    run = run_linear_hooks(model, settings, hooks.hook_for, vae=vae, progress=progress, label="imatrix")
    base, tr, settings = run.base, run.transformer, run.settings
    tensors = gguf_tensors(tr, base.family)
    shapes = {k: tuple(v.shape) for k, v in tr.state_dict().items()}
    stats = column_stats(tensors, {k: v.to(torch.float32) for k, v in hooks.sums.items()}, shapes)
    counts = {name: hooks.rows[src] for name, (_, src) in stats.items()}
    notes = []
    if "transformer_2" in base.experts:
        notes.append(
            "two experts: the matrix is the high-noise transformer's; collect the other from a pipeline of it"
        )
    write_imatrix(
        out,
        {k: v for k, (v, _) in stats.items()},
        counts,
        datasets=[f"weightsmith reference generations: seeds {list(settings.seeds)}, {settings.steps} steps"],
        chunks=run.items,
        overwrite=overwrite,
    )
    rows = sum(counts.values()) // max(len(counts), 1)
    return ImatrixResult(out, len(stats), rows, run.items, notes, time.perf_counter() - t0)
