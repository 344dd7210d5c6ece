"""`weightsmith sensitivity`: which Linear layers hurt the output most when quantized, one at a time.

A reference generation records the transformer's calls (inputs and outputs) at every denoising
step. A few of them, spread over the steps, become probes; then each Linear layer alone is
quantized with the scheme and the transformer re-run on the probes. The layer's score is the
output SQNR over all probes (dB; lower = more sensitive). The most sensitive layers become
``--keep`` suggestions, generalised to a glob across blocks when a role is sensitive in most
blocks. Names are GGUF (original/SAT) names for gguf schemes, Diffusers names for the others, as
``weightsmith quantize --keep`` expects them.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightsmith.io.atomic import atomic_file
from weightsmith.progress import bar
from weightsmith.verify.fakequant import weight_quantizer
from weightsmith.verify.metrics import cosine, jsonable, sqnr
from weightsmith.verify.models import resolve_baseline
from weightsmith.verify.names import diffusers_to_gguf, gguf_shapes, gguf_tensors
from weightsmith.verify.settings import GenerationSettings

SCHEMA = "weightsmith.sensitivity/1"


@dataclass
class LayerEffect:
    module: str
    names: list[str]  # what --keep matches: GGUF names (gguf schemes) or the Diffusers weight name
    qtype: str
    params: int
    weight_sqnr: float
    output_sqnr: float
    output_cosine: float


@dataclass
class SensitivityResult:
    model: str
    family: str
    variant: str
    scheme: str
    probes: int
    layers: list[LayerEffect]
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "family": self.family,
            "variant": self.variant,
            "scheme": self.scheme,
            "probes": self.probes,
            "suggested_keep": self.suggestions,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
            "layers": [
                {
                    "rank": i + 1,
                    "module": r.module,
                    "names": r.names,
                    "type": r.qtype,
                    "params": r.params,
                    "weight_sqnr_db": jsonable(r.weight_sqnr),
                    "output_sqnr_db": jsonable(r.output_sqnr),
                    "output_cosine": jsonable(r.output_cosine),
                }
                for i, r in enumerate(self.layers)
            ],
        }


class _Recorder:
    """Forward hooks that keep a copy of every call's arguments and first output."""

    def __init__(self, module: nn.Module) -> None:
        self.calls: list[tuple[tuple, dict, torch.Tensor]] = []
        self._pending: list[tuple[tuple, dict]] = []
        self._h1 = module.register_forward_pre_hook(self._pre, with_kwargs=True)
        self._h2 = module.register_forward_hook(self._post, with_kwargs=True)

    def _pre(self, _m: nn.Module, args: tuple, kwargs: dict) -> None:
        self._pending.append((_clone(args), _clone(kwargs)))

    def _post(self, _m: nn.Module, _args: tuple, _kwargs: dict, out: Any) -> None:
        a, k = self._pending.pop()
        self.calls.append((a, k, _first(out).detach().clone()))

    def remove(self) -> None:
        self._h1.remove()
        self._h2.remove()


def _clone(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, tuple):
        return tuple(_clone(v) for v in x)
    if isinstance(x, list):
        return [_clone(v) for v in x]
    if isinstance(x, dict):
        return {k: _clone(v) for k, v in x.items()}
    return x


def _first(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.sample


@dataclass
class Probes:
    """Recorded transformer calls of reference generations, to re-run the transformer on.

    ``calls``: (args, kwargs, reference output) of a few calls spread over the denoising steps;
    ``recorded``: how many calls the generations made; ``transformer``: the baseline's
    (high-noise) transformer, whose weights a caller may swap and restore."""

    base: Any
    transformer: nn.Module
    calls: list[tuple[tuple, dict, torch.Tensor]]
    recorded: int


def record_probes(
    model: str,
    settings: GenerationSettings,
    *,
    vae: str | None = None,
    probes: int = 4,
    progress: bool = True,
) -> Probes:
    """Run MODEL's reference generations once and keep ``probes`` transformer calls, spread over
    the steps (the first and the last included)."""
    from weightsmith.verify.runner import Runner, prepare

    base = resolve_baseline(model, vae)
    sched, settings, device, items = prepare(base, settings)
    runner = Runner(base, sched, settings, device)
    experts = {e: runner.baseline_module(e) for e in base.experts}
    tr = experts["transformer"]
    rec = _Recorder(tr)
    try:
        with bar(len(items), "reference", "gen", enabled=progress) as tick:
            runner.run(experts, items, tick, decode=False)
    finally:
        rec.remove()
    if not rec.calls:
        from weightsmith.errors import UsageError

        raise UsageError("the transformer was never called", hint="check --steps and the model")
    n = min(probes, len(rec.calls))
    pick = sorted({round(i * (len(rec.calls) - 1) / max(n - 1, 1)) for i in range(n)})
    return Probes(base, tr, [rec.calls[i] for i in pick], len(rec.calls))


def output_error(tr: nn.Module, calls: list[tuple[tuple, dict, torch.Tensor]]) -> tuple[float, float, float]:
    """(signal power, noise power, worst cosine) of the transformer's outputs on the probes
    against their recorded references, summed over every probe."""
    sig = noise = 0.0
    cos = []
    with torch.inference_mode():
        for args, kwargs, ref in calls:
            out = _first(tr(*args, **kwargs)).float()
            r = ref.float()
            sig += float(r.double().pow(2).sum())
            noise += float((r.double() - out.double()).pow(2).sum())
            cos.append(cosine(r, out))
    return sig, noise, min(cos)


def db(sig: float, noise: float) -> float:
    """10 log10(signal / noise): ``inf`` for no noise."""
    return math.inf if noise == 0 else (10 * math.log10(sig / noise) if sig > 0 else -math.inf)


def run_sensitivity(
    model: str,
    scheme: str,
    settings: GenerationSettings,
    *,
    vae: str | None = None,
    probes: int = 4,
    progress: bool = True,
) -> SensitivityResult:
    """Score every Linear layer of MODEL's transformer quantized alone with ``scheme``."""
    from weightsmith.quantize.gguf.recipes import assign_types, get_recipe

    t0 = time.perf_counter()
    quantize_one = weight_quantizer(scheme)
    pr = record_probes(model, settings, vae=vae, probes=probes, progress=progress)
    base, tr, calls = pr.base, pr.transformer, pr.calls

    tensors = gguf_tensors(tr, base.family)
    to_gguf = diffusers_to_gguf(tensors)
    gguf = scheme.lower().startswith("gguf:")
    types: dict[str, str] = {}
    if gguf:
        recipe = get_recipe(scheme.split(":", 1)[1])
        shapes = gguf_shapes(tr, tensors)
        types = assign_types(recipe, base.family, sorted(shapes.items()), ()).types()
    linears = [(name, mod) for name, mod in tr.named_modules() if isinstance(mod, nn.Linear)]
    layers: list[LayerEffect] = []
    with bar(len(linears), "sensitivity", "layer", enabled=progress) as tick, torch.inference_mode():
        for name, mod in linears:
            wname = f"{name}.weight"
            gnames = to_gguf.get(wname, [])
            qtype = types.get(gnames[0]) if (gguf and gnames) else None
            w = mod.weight.data
            deq, used = quantize_one(w, gnames[0] if gnames else wname, qtype)
            mod.weight.data = deq
            try:
                sig, noise, cos = output_error(tr, calls)
            finally:
                mod.weight.data = w
            layers.append(
                LayerEffect(
                    name,
                    gnames if gguf else [wname],
                    used,
                    w.numel(),
                    sqnr(w, deq),
                    db(sig, noise),
                    cos,
                )
            )
            tick.update(1)
    layers.sort(key=lambda r: (r.output_sqnr, r.module))
    notes = list(base.notes)
    if "transformer_2" in base.experts:
        notes.append("two experts: the high-noise transformer's layers are ranked (it runs the first steps)")
    notes.append(f"{len(calls)} probe call(s) of {pr.recorded} recorded, spread over the steps")
    all_names = [nm for r in layers for nm in r.names]
    return SensitivityResult(
        model,
        base.family,
        base.variant,
        scheme,
        len(calls),
        layers,
        suggest_keep(layers, all_names),
        notes,
        time.perf_counter() - t0,
    )


def suggest_keep(layers: list[LayerEffect], all_names: list[str], max_share: float = 0.1) -> list[str]:
    """Globs (or names) of the layers clearly more sensitive than the rest.

    Sensitive: output SQNR 3 dB or more below the median, at most ``max_share`` of the layers
    (at least one). A name whose block index, replaced by ``*``, matches only sensitive names
    (and at least two) becomes that glob.
    """
    finite = [r.output_sqnr for r in layers if math.isfinite(r.output_sqnr)]
    if not finite:
        return []
    med = statistics.median(finite)
    cap = max(1, int(len(layers) * max_share))
    picked = [r for r in layers if r.output_sqnr <= med - 3.0][:cap] or layers[:1]
    names = [n for r in picked for n in r.names]
    chosen: list[str] = []
    for n in names:
        glob = re.sub(r"\.\d+\.", ".*.", n, count=1)
        matches = [m for m in all_names if fnmatch.fnmatchcase(m, glob)]
        pattern = glob if glob != n and len(matches) >= 2 and all(m in names for m in matches) else n
        if pattern not in chosen:
            chosen.append(pattern)
    return chosen


def format_ranking(result: SensitivityResult, top: int = 20) -> str:
    """The ranked table (most sensitive first) and the suggested --keep options."""
    from weightsmith.verify.gates import format_value

    rows = result.layers[:top]
    w = max([len("layer")] + [len(r.module) for r in rows])
    lines = [
        f"{result.family} {result.variant}, {result.scheme}: output SQNR with one layer quantized ({result.probes} probes)",
        f"{'rank':>4}  {'layer':<{w}}  {'type':<8}  {'out dB':>8}  {'weight dB':>9}",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(
            f"{i:>4}  {r.module:<{w}}  {r.qtype[:8]:<8}  {format_value(r.output_sqnr):>8}  {format_value(r.weight_sqnr):>9}"
        )
    if len(result.layers) > top:
        lines.append(f"  ... {len(result.layers) - top} more (--top N, --json)")
    if result.suggestions:
        lines.append("suggested: " + " ".join(f"--keep '{s}'" for s in result.suggestions))
    return "\n".join(lines)


def write_sensitivity_report(folder: str | Path, result: SensitivityResult) -> Path:
    """sensitivity.json, sensitivity.md and a self-contained sensitivity.html with the ranked bar chart."""
    from html import escape

    from weightsmith.verify.report import svg

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(folder / "sensitivity.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(result.to_json(), indent=1) + "\n")
    md = [
        f"# Sensitivity: {result.family} {result.variant}, {result.scheme}",
        "",
        "```",
        format_ranking(result, 50),
        "```",
        "",
    ]
    md += [f"- {n}" for n in result.notes]
    with atomic_file(folder / "sensitivity.md", overwrite=True) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    rows = [(r.module, r.output_sqnr) for r in result.layers[:40]]
    n_sugg = sum(
        1
        for r in result.layers
        if any(fnmatch.fnmatchcase(n, s) for s in result.suggestions for n in r.names)
    )
    chart = svg.hbars(rows, "output SQNR with one layer quantized (dB, lowest first)", "dB", highlight=n_sugg)
    body = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>sensitivity</title>'
        "<style>body{font-family:system-ui,sans-serif;margin:24px}</style></head><body>"
        f"<h1>Sensitivity: {escape(result.family)} {escape(result.variant)}, {escape(result.scheme)}</h1>"
        f"<p>Suggested: {' '.join(f'<code>--keep {escape(s)}</code>' for s in result.suggestions) or 'none'}</p>"
        f"{chart}<pre>{escape(format_ranking(result, 100))}</pre></body></html>\n"
    )
    path = folder / "sensitivity.html"
    with atomic_file(path, overwrite=True) as tmp:
        tmp.write_text(body)
    return path
