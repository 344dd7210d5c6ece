"""The ``auto:FORMAT`` search: costs, allocation, then write-and-verify until the gate holds.

The cost model predicts a mix's output SQNR on the recorded transformer calls (``costs``); the
gates score whole generations (final latents, decoded frames), which differ from it by an offset
that depends on the model and the sampler. The first try aims the prediction at each dB gate's
threshold plus a margin; each verified try measures the offset (gate value minus predicted SQNR)
and the next try re-aims with it: tighter after a failure, looser after a pass with room to
spare. Gates not in dB step 3 dB tighter after a failure. This aimed search gets two thirds of
``max_tries``; the rest go to the verified refinement (``refine``: smaller uniform recipes the
proxy's observed error cannot rule out, then layer downgrades of the smallest pass). At most
``max_tries`` artifacts are written and verified; the smallest that passed is moved to DST with
its verify report beside it (``DST.verify/``). None passing is exit 1.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weightsmith.auto.allocate import Option, best_fidelity_mix, frontier, max_fidelity, min_bytes
from weightsmith.auto.costs import CostModel, cost_key, from_db, to_db
from weightsmith.auto.formats import AutoFormat, Layout, get_auto_format
from weightsmith.auto.refine import refine
from weightsmith.errors import GateFailed, UsageError
from weightsmith.io.atomic import atomic_dir, atomic_file, check_destination, scratch_dir
from weightsmith.quantize.report import layers_path
from weightsmith.verify.gates import Gate, frame_gates
from weightsmith.verify.metrics import METRICS
from weightsmith.verify.settings import GenerationSettings

SCHEMA = "weightsmith.auto/1"
MARGIN_DB = 0.5  # aim this far above a dB threshold
STOP_DB = 0.2  # a pass and a fail closer than this in prediction end the search


@dataclass
class AutoOptions:
    src: str
    dst: str
    scheme: str
    targets: list[Gate] = field(default_factory=list)
    max_size: int | None = None
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    vae: str | None = None
    keep: tuple[str, ...] = ()
    device: str = "auto"
    overwrite: bool = False
    cache_dir: Path | None = None
    probes: int = 4
    max_tries: int = 4
    progress: bool = True


@dataclass
class Attempt:
    aim_db: float
    predicted_db: float
    measured_db: float
    bytes: int
    passed: bool
    metrics: dict[str, float | None]
    seconds: float
    choice: dict[str, str]
    path: Path | None = None
    verify: Any = None  # the VerifyResult, for the report beside DST
    phase: str = "aimed"  # aimed (the secant search), uniform LABEL or downgrade N layers (refine)


@dataclass
class AutoResult:
    dst: Path
    scheme: str
    family: str
    variant: str
    targets: list[str]
    max_size: int | None
    layout: Layout
    choice: dict[str, str]
    costs: CostModel
    attempts: list[Attempt]
    uniform: dict[str, tuple[int, float]]  # recipe -> (bytes, predicted noise ratio)
    frontier: list[tuple[int, float]]
    timing: dict[str, float]
    verify_report: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def final(self) -> Attempt | None:
        ok = [a for a in self.attempts if a.passed]
        return min(ok, key=lambda a: a.bytes) if ok else None


def run_auto(opts: AutoOptions) -> AutoResult:
    """Search, write and verify; the smallest passing artifact ends at ``opts.dst``."""
    from weightsmith.verify.cache import BaselineCache
    from weightsmith.verify.models import file_digest, resolve_baseline
    from weightsmith.verify.sensitivity import record_probes

    t0 = time.perf_counter()
    fmt = get_auto_format(opts.scheme)
    dst = Path(opts.dst)
    fmt.check_dst(dst)
    if not opts.targets and opts.max_size is None:
        raise UsageError(
            f"--scheme {opts.scheme} needs --target (e.g. 'psnr>=32') or --max-size",
            hint="say what the file must keep (a gate) or how large it may be",
        )
    if opts.max_tries < 1:
        raise UsageError("--max-tries must be at least 1", hint="e.g. --max-tries 4")
    verify_dir = dst.parent / (dst.name + ".verify")
    check_destination(dst, opts.overwrite, "dir" if fmt.folder else "file")
    check_destination(layers_path(dst), opts.overwrite, "file")
    check_destination(verify_dir, opts.overwrite, "dir")
    base = resolve_baseline(opts.src, opts.vae)
    needs = frame_gates(opts.targets)
    if base.vae is None and needs:
        raise UsageError(
            f"targets on {', '.join(sorted({g.metric for g in needs}))} need decoded frames, but SRC has no VAE",
            hint="pass --vae PATH (or the pipeline folder as SRC), or target latent_sqnr / latent_psnr",
        )
    settings = opts.settings
    src_t = base.experts["transformer"]
    model = _meta_model(src_t)
    layout = fmt.layout(model, base.family, opts.keep)
    if not layout.units:
        raise UsageError(
            f"no layer of {opts.src} is left for {opts.scheme} to choose a type for",
            hint="loosen --keep, or use a format whose blocks fit the rows",
        )
    cache = BaselineCache(opts.cache_dir)
    memo = cache.digests()
    digest = file_digest(src_t.files, memo)
    cache.save_digests(memo)
    key = cost_key(
        {
            "transformer": digest,
            "settings": settings.key_material(),
            "seeds": list(settings.seeds),
            "probes": opts.probes,
            "format": fmt.name,
        }
    )
    cache_file = opts.cache_dir / "auto" / f"{key}.json" if opts.cache_dir is not None else None
    costs = CostModel(
        fmt,
        layout.units,
        lambda: record_probes(opts.src, settings, vae=opts.vae, probes=opts.probes, progress=opts.progress),
        cache_file,
        opts.progress,
    )
    extra: dict[str, list[str]] = {}
    for mix in layout.uniform.values():
        for u, t in mix.items():
            extra.setdefault(u, []).append(t)
    costs.measure_all(extra)
    t_costs = time.perf_counter() - t0
    attempts: list[Attempt] = []
    notes: list[str] = []
    with scratch_dir(dst) as scratch:
        final = _search(opts, fmt, layout, costs, scratch, attempts, notes)
        uniform = {
            r: (layout.fixed_bytes + sum(_size(layout, u, t) for u, t in mix.items()), costs.predicted(mix))
            for r, mix in layout.uniform.items()
        }
        front = [(b + layout.fixed_bytes, n) for b, n in frontier(_table(layout, costs))]
        result = AutoResult(
            dst,
            opts.scheme,
            base.family,
            base.variant,
            [g.text for g in opts.targets],
            opts.max_size,
            layout,
            final.choice if final else {},
            costs,
            attempts,
            uniform,
            front,
            {},
            notes=notes,
        )
        if final is not None:
            _place(final, dst, verify_dir, opts.overwrite, fmt.folder)
            result.verify_report = verify_dir
    if result.choice:  # each chosen (layer, type) measured alone, their sum against all at once
        costs.refine(result.choice)
        pred = sum(costs.measured(u, t) or 0.0 for u, t in result.choice.items())
        meas = costs.measure_mix(result.choice)
        result.timing["additivity_predicted_db"] = to_db(pred)
        result.timing["additivity_measured_db"] = to_db(meas)
    result.timing.update(
        {
            "costs_seconds": t_costs,
            "tries_seconds": sum(a.seconds for a in attempts),
            "total_seconds": time.perf_counter() - t0,
            "recorded_generations": float(costs.recorded),
            "cost_entries_measured": float(costs.misses),
        }
    )
    first = next((a.seconds for a in attempts), 0.0)
    if first:
        result.timing["multiple_of_first_try"] = result.timing["total_seconds"] / first
    return result


def _table(layout: Layout, costs: CostModel) -> dict[str, list[Option]]:
    return {
        u.name: [Option(t, u.sizes[t], costs.noise(u.name, t)) for t in u.candidates] for u in layout.units
    }


def _settled(
    layout: Layout, costs: CostModel, pick_fn: Callable[[dict[str, list[Option]]], dict[str, Option] | None]
) -> tuple[dict[str, Option] | None, dict[str, list[Option]]]:
    """The table and the pick from it."""
    table = _table(layout, costs)
    return pick_fn(table), table


def _size(layout: Layout, unit: str, qtype: str) -> int:
    u = next(x for x in layout.units if x.name == unit)
    if qtype in u.sizes:
        return u.sizes[qtype]
    from weightsmith.auto.formats import ggml_bytes

    return ggml_bytes(qtype, u.shape)


def _meta_model(src: Any) -> torch.nn.Module:
    from weightsmith.families import get_component

    comp = get_component(src.detection.family, "transformer")
    cls = comp.model_class(src.detection.variant)
    cfg = {k: v for k, v in (src.config or {}).items() if not k.startswith("_")}
    dtype = _source_dtype(src.path)
    with torch.device("meta"):
        model = cls(**cfg)
    if dtype != torch.float32:  # only byte counts are read off it: no float32-module warnings
        from diffusers.utils import logging as dlogging

        level = dlogging.get_verbosity()
        dlogging.set_verbosity_error()
        try:
            model = model.to(dtype)
        finally:
            dlogging.set_verbosity(level)
    return model


def _source_dtype(path: Path) -> torch.dtype:
    from weightsmith.io import open_single

    ck = open_single(path)
    try:
        floats = [
            i.dtype for i in ck.infos.values() if i.dtype in (torch.float32, torch.float16, torch.bfloat16)
        ]
    finally:
        ck.close()
    return max(sorted(set(floats), key=str), key=floats.count) if floats else torch.float32


def _gate_db(g: Gate) -> float | None:
    """The output SQNR a gate asks for, where its metric maps to one (dB metrics, cosines)."""
    info = METRICS.get(g.metric)
    if info is None or not info.higher_is_better:
        return None
    if info.unit == "dB":
        return g.threshold
    if "cosine" in g.metric and g.threshold < 1:
        return -10 * math.log10(2 * (1 - g.threshold))
    return None


def _aim(
    opts: AutoOptions, history: dict[str, list[tuple[float, float]]], margin: float, last: float
) -> float:
    """The predicted output SQNR to aim at: for each dB gate, the secant through its last two
    (predicted, measured) points (slope 1 through the only one; the threshold itself before any),
    solved for threshold + margin; cosine gates map to dB; other gates start at 30 dB."""
    aims = []
    for g in opts.targets:
        want = _gate_db(g)
        pts = history.get(g.text, [])
        if want is None:
            aims.append(max(30.0, last))
            continue
        if not pts:
            aims.append(want + margin)
            continue
        p1, v1 = pts[-1]
        slope = 1.0
        older = [(p, v) for p, v in pts[:-1] if abs(p - p1) > 0.1]
        if older:
            p0, v0 = older[-1]
            slope = min(3.0, max(0.2, (v1 - v0) / (p1 - p0)))
        aims.append(p1 + (want + margin - v1) / slope)
    return max(aims) if aims else 0.0


def _search(
    opts: AutoOptions,
    fmt: AutoFormat,
    layout: Layout,
    costs: CostModel,
    scratch: Path,
    attempts: list[Attempt],
    notes: list[str],
) -> Attempt | None:
    fixed = layout.fixed_bytes
    if not opts.targets:  # --max-size alone: the most faithful mix that fits, verified as it is
        size = opts.max_size or 0
        pick, table = _settled(layout, costs, lambda t: max_fidelity(t, size - fixed))
        if pick is None:
            raise GateFailed(
                f"no mix fits --max-size {size} bytes (the smallest is "
                f"{fixed + sum(min(o.bytes for o in v) for v in table.values())})",
                hint="allow a larger --max-size",
            )
        a = _try(opts, fmt, _choice(pick), costs, scratch, 0, math.nan)
        attempts.append(a)
        return a if a.passed else None  # without gates: the built-in checks (finite, frames)
    history: dict[str, list[tuple[float, float]]] = {}
    floor, ceiling = -math.inf, math.inf  # predicted dB of the best failure / smallest pass
    aim = _aim(opts, history, MARGIN_DB, 0.0)
    for i in range(aimed_tries(opts.max_tries)):
        pick, table = _settled(
            layout, costs, lambda t, b=from_db(aim): min_bytes(t, b, list(layout.uniform.values()))
        )
        best_fid = best_fidelity_mix(table)
        if pick is None:
            pick = best_fid
            notes.append(f"try {i + 1}: aim {aim:.2f} dB is beyond the most faithful mix; trying that")
        if opts.max_size is not None and fixed + sum(o.bytes for o in pick.values()) > opts.max_size:
            room = opts.max_size - fixed
            pick, table = _settled(layout, costs, lambda t, r=room: max_fidelity(t, r))
            if pick is None:
                notes.append("no mix fits --max-size")
                break
            notes.append(
                f"try {i + 1}: the mix for {aim:.2f} dB is over --max-size; the best that fits instead"
            )
        choice = _choice(pick)
        seen = next((a for a in attempts if a.choice == choice), None)
        if seen is not None:  # the aim moved too little to change the mix
            if seen.passed or choice == _choice(best_fid):
                break
            aim = max(aim, floor) + 1.0
            continue
        a = _try(opts, fmt, choice, costs, scratch, i, aim)
        attempts.append(a)
        db_gates = [g for g in opts.targets if _gate_db(g) is not None and METRICS[g.metric].unit == "dB"]
        for g in db_gates:
            v = a.metrics.get(g.metric)
            if v is not None and math.isfinite(v) and math.isfinite(a.predicted_db):
                history.setdefault(g.text, []).append((a.predicted_db, v))
        if a.passed:
            ceiling = min(ceiling, a.predicted_db)
            if len(db_gates) < len(opts.targets):
                break  # a gate without a dB model: a pass is where it stops
            nxt = _aim(opts, history, MARGIN_DB / 2, a.predicted_db)
        else:
            floor = max(floor, a.predicted_db)
            if choice == _choice(best_fid):
                break
            nxt = _aim(opts, history, MARGIN_DB, a.predicted_db)
            if len(db_gates) < len(opts.targets):
                nxt = max(nxt, a.predicted_db + 3.0)
        if math.isfinite(ceiling) and ceiling - floor < STOP_DB:
            break
        if nxt <= floor or nxt >= ceiling:  # outside what is known: halve the bracket
            nxt = (floor + ceiling) / 2 if math.isfinite(floor) and math.isfinite(ceiling) else nxt
        if math.isfinite(ceiling) and nxt >= ceiling - STOP_DB:
            break
        aim = nxt
    refine(
        layout,
        costs,
        opts.targets,
        attempts,
        opts.max_tries - len(attempts),
        lambda choice, aim, phase: _try(opts, fmt, choice, costs, scratch, len(attempts), aim, phase),
        notes,
    )
    ok = [a for a in attempts if a.passed]
    if not ok:
        return None
    return min(ok, key=lambda a: (a.bytes, -a.predicted_db))


def aimed_tries(max_tries: int) -> int:
    """The tries the aimed search may use; at least a third of ``max_tries`` (one at least, from
    two) is left for the verified refinement."""
    return max_tries if max_tries < 2 else max_tries - max(1, max_tries // 3)


def _choice(pick: dict[str, Option]) -> dict[str, str]:
    return {u: o.qtype for u, o in sorted(pick.items())}


def _try(
    opts: AutoOptions,
    fmt: AutoFormat,
    choice: dict[str, str],
    costs: CostModel,
    scratch: Path,
    i: int,
    aim: float,
    phase: str = "aimed",
) -> Attempt:
    from weightsmith.verify.run import VerifyOptions, verify

    t0 = time.perf_counter()
    n = i + 1
    while (scratch / f"try{n}").exists():
        n += 1
    folder = scratch / f"try{n}"
    folder.mkdir()
    out = folder / Path(opts.dst).name
    fmt.write(opts.src, out, choice, keep=opts.keep, device=opts.device)
    res = verify(
        VerifyOptions(
            opts.src,
            [str(out)],
            opts.settings,
            vae=opts.vae,
            gates=list(opts.targets),
            cache_dir=opts.cache_dir,
            consumers="weightsmith",
            progress=opts.progress,
        )
    )
    c = res.candidates[0]
    pred = to_db(costs.predicted(choice))
    lat = c.worst.get("latent_sqnr")
    return Attempt(
        aim,
        pred,
        lat if lat is not None else math.nan,
        c.bytes,
        c.passed,
        dict(c.worst),
        time.perf_counter() - t0,
        choice,
        out,
        res,
        phase,
    )


def _place(final: Attempt, dst: Path, verify_dir: Path, overwrite: bool, folder: bool) -> None:
    """Move the chosen try's artifact and per-layer table to DST and write its verify report beside."""
    from weightsmith.verify.report import write_report

    assert final.path is not None
    res = final.verify
    res.candidates[0].label = dst.name
    res.candidates[0].paths = {k: str(dst) for k in res.candidates[0].paths}
    with (
        atomic_file(layers_path(dst), overwrite) as table,
        (atomic_dir if folder else atomic_file)(dst, overwrite) as main,
    ):
        os.replace(final.path, main)
        os.replace(layers_path(final.path), table)
    with atomic_dir(verify_dir, overwrite) as vtmp:
        write_report(vtmp, [res])
