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
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from weightsmith.progress import bar
from weightsmith.verify.models import resolve_baseline
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

    def __init__(self, model: nn.Module) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self._hooks = []
        for name, mod in model.named_modules():
            if isinstance(mod, nn.Linear):
                self._hooks.append(
                    mod.register_forward_pre_hook(self._hook(f"{name}.weight", mod.in_features))
                )

    def _hook(self, key: str, width: int):
        def hook(_m: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x = x.reshape(-1, width).to(torch.float64)
            s = x.pow(2).sum(0).cpu()
            self.sums[key] = self.sums[key] + s if key in self.sums else s
            self.rows[key] = self.rows.get(key, 0) + x.shape[0]

        return hook

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def linear_inputs(
    model: str, settings: GenerationSettings, *, vae: str | None = None, max_rows: int = 4096
) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """Inputs each Linear of MODEL's transformer sees in reference generations (weight name ->
    [rows, in_features], at most ``max_rows`` evenly spaced rows), and the transformer itself.

    For measuring what an importance matrix optimises: a quantized layer's output error on the
    activations it really gets."""
    from weightsmith.verify.runner import Runner, prepare

    base = resolve_baseline(model, vae)
    sched, settings, device, items = prepare(base, settings)
    runner = Runner(base, sched, settings, device)
    experts = {e: runner.baseline_module(e) for e in base.experts}
    tr = experts["transformer"]
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, mod in tr.named_modules():
        if isinstance(mod, nn.Linear):

            def hook(
                _m: nn.Module, args: tuple, key: str = f"{name}.weight", width: int = mod.in_features
            ) -> None:
                seen.setdefault(key, []).append(args[0].detach().reshape(-1, width).float().cpu())

            hooks.append(mod.register_forward_pre_hook(hook))
    try:
        runner.run(experts, items, _NoTick(), decode=False)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for k, parts in seen.items():
        x = torch.cat(parts)
        if x.shape[0] > max_rows:
            x = x[torch.linspace(0, x.shape[0] - 1, max_rows).round().long()]
        out[k] = x
    return out, tr


class _NoTick:
    def update(self, n: int = 1) -> None:
        pass


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
    from weightsmith.verify.runner import Runner, prepare

    t0 = time.perf_counter()
    out = Path(out)
    base = resolve_baseline(model, vae)
    sched, settings, device, items = prepare(base, settings)
    runner = Runner(base, sched, settings, device)
    experts = {e: runner.baseline_module(e) for e in base.experts}
    tr = experts["transformer"]
    hooks = _SquareSums(tr)
    try:
        with bar(len(items), "imatrix", "gen", enabled=progress) as tick:
            runner.run(experts, items, tick, decode=False)
    finally:
        hooks.remove()
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
        chunks=len(items),
        overwrite=overwrite,
    )
    rows = sum(counts.values()) // max(len(counts), 1)
    return ImatrixResult(out, len(stats), rows, len(items), notes, time.perf_counter() - t0)
