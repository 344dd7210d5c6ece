"""`weightsmith verify`: the baseline's reference generations (cached), each candidate's, the scores,
the gates and the report.

Memory holds one transformer at a time besides the VAE: the baseline runs first (only for the
items not in the cache) and is released before the first candidate loads.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import weightsmith.verify.distributed as distributed
from weightsmith.errors import InputError, UsageError
from weightsmith.progress import bar
from weightsmith.verify.cache import BaselineCache, cache_key
from weightsmith.verify.gates import Gate, evaluate, frame_gates
from weightsmith.verify.metrics import ItemScore, compare
from weightsmith.verify.models import (
    Baseline,
    Candidate,
    Source,
    file_digest,
    load_transformer,
    nonfinite_weights,
    resolve_baseline,
    resolve_candidates,
)
from weightsmith.verify.perceptual import perceptual_notes
from weightsmith.verify.pipelines import Generation
from weightsmith.verify.preview import preview
from weightsmith.verify.results import (
    CandidateResult,
    VerifyResult,
    aggregate,
    check_gates,
    merge,
    settings_dict,
    summary_table,
)
from weightsmith.verify.runner import Item, Runner, collect, item_key, prepare
from weightsmith.verify.schedulers import SchedulerChoice
from weightsmith.verify.settings import GenerationSettings
from weightsmith.verify.text_encoder import check_text_prompts, run_text_encoder_candidate

__all__ = ["VerifyOptions", "VerifyResult", "check_gates", "nonfinite_weights", "summary_table", "verify"]


@dataclass
class VerifyOptions:
    baseline: str
    candidates: list[str]
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    vae: str | None = None
    gates: list[Gate] = field(default_factory=list)
    cache_dir: Path | None = None
    consumers: str = "both"
    progress: bool = True


def verify(opts: VerifyOptions) -> VerifyResult:
    """Run the verification; returns the merged result on rank 0 (other ranks: their partial one)."""
    t0 = time.perf_counter()
    world = distributed.setup()
    try:
        return _verify(opts, world, t0)
    finally:
        distributed.teardown(world)


def _verify(opts: VerifyOptions, world: distributed.World, t0: float) -> VerifyResult:
    if not opts.candidates:
        raise UsageError(
            "name at least one CANDIDATE to verify", hint="e.g. weightsmith verify base/ cand.gguf"
        )
    base = resolve_baseline(opts.baseline, opts.vae)
    needs = frame_gates(opts.gates)
    if base.vae is None and needs:
        names = ", ".join(sorted({g.metric for g in needs}))
        raise UsageError(
            f"gates on {names} need decoded frames, but the baseline has no VAE",
            hint="pass --vae PATH (or a pipeline folder as BASELINE), or gate on latent_sqnr / latent_cosine / latent_psnr",
        )
    sched, settings, device, items = prepare(base, opts.settings, world)
    cands = resolve_candidates(opts.candidates, base, opts.consumers)
    check_text_prompts(cands, settings)
    mine = distributed.my_share(world, items)

    cache = BaselineCache(opts.cache_dir)
    memo = cache.digests()
    parts_digest = {e: file_digest(s.files, memo) for e, s in base.experts.items()}
    if base.vae is not None:
        parts_digest["vae"] = file_digest(base.vae.files, memo)
    if world.is_main:
        cache.save_digests(memo)
    base_digest = cache_key(parts_digest)
    try:
        results, base_preview = _generate_all(
            opts, world, base, base_digest, sched, settings, device, cands, mine, cache
        )
        payload: Any = (results, base_preview, cache.hits, cache.misses)
    except Exception as e:  # noqa: BLE001 - every rank must reach the gather, or the others hang
        if not world.active:
            raise
        payload = e
    gathered = distributed.gather(world, payload)
    errors = [g for g in (gathered or [payload]) if isinstance(g, BaseException)]
    if errors:
        raise errors[0]
    results, base_preview = payload[0], payload[1]
    notes = list(base.notes) + perceptual_notes()
    if settings.scheduler == "lightning":
        notes.append("Lightning preset: 4 steps without classifier-free guidance")
    result = VerifyResult(
        baseline={
            "label": base.label,
            "family": base.family,
            "variant": base.variant,
            "bytes": sum(s.bytes for s in base.experts.values()),
            "experts": {e: str(s.path) for e, s in base.experts.items()},
            "vae": str(base.vae.path) if base.vae is not None else None,
            "digest": base_digest,
        },
        settings=settings_dict(settings, device),
        scheduler={"name": sched.name, "class": sched.class_name, "config": sched.config},
        notes=notes,
        candidates=results,
        gates=list(opts.gates),
        frames=base.vae is not None,
        world_size=world.size,
    )
    if gathered is None:  # not rank 0
        return result
    result.candidates = merge([g[0] for g in gathered])
    result.baseline_preview = next((g[1] for g in gathered if g[1] is not None), None)
    result.cache = {
        "dir": str(opts.cache_dir) if opts.cache_dir else None,
        "hits": sum(g[2] for g in gathered),
        "misses": sum(g[3] for g in gathered),
    }
    for c in result.candidates:
        aggregate(c)
        c.gates = evaluate(c.label, c.worst, [f for it in c.items for f in it.failures], list(opts.gates))
    result.seconds = time.perf_counter() - t0
    return result


def _generate_all(
    opts: VerifyOptions,
    world: distributed.World,
    base: Baseline,
    base_digest: str,
    sched: SchedulerChoice,
    settings: GenerationSettings,
    device: torch.device,
    cands: list[Candidate],
    mine: list[Item],
    cache: BaselineCache,
) -> tuple[list[CandidateResult], np.ndarray | None]:
    """This rank's baseline generations (cached) and every candidate's, scored."""
    runner = Runner(base, sched, settings, device)
    total = len(mine) * (1 + len(cands))
    base_gens: dict[int, Generation] = {}
    with bar(total, "verify", "gen", enabled=opts.progress and world.is_main) as tick:
        keys = {it.index: item_key(base_digest, sched, settings, it, base) for it in mine}
        todo = []
        for it in mine:
            got = cache.get(keys[it.index])
            if got is not None:
                base_gens[it.index] = got
                tick.update(1)
            else:
                todo.append(it)
        if todo:
            experts = {e: runner.baseline_module(e) for e in base.experts}
            for it, gen in zip(todo, runner.run(experts, todo, tick)):
                if not gen.finite:
                    raise InputError(
                        f"the baseline itself produced NaN/Inf ({it.label}, step {gen.nonfinite_step})",
                        hint="check the baseline; in fp16 try --dtype bf16 or fp32",
                    )
                base_gens[it.index] = gen
                cache.put(keys[it.index], gen, {"baseline": base.label, "item": it.label})
            del experts
        runner.release_baseline()
        results = []
        for cand in cands:
            if cand.text_encoder is not None:
                results.append(run_text_encoder_candidate(runner, cand, mine, base_gens, tick))
            else:
                results.append(_run_candidate(runner, cand, base, mine, base_gens, tick))
            collect(device)
    base_preview = preview(base_gens[mine[0].index]) if mine and mine[0].index == 0 else None
    return results, base_preview


def _run_candidate(
    runner: Runner,
    cand: Candidate,
    base: Baseline,
    items: list[Item],
    base_gens: dict[int, Generation],
    tick: Any,
) -> CandidateResult:
    t = time.perf_counter()
    experts: dict[str, nn.Module] = {}
    for e in base.experts:
        src: Source | None = cand.experts.get(e)
        if src is None:  # a candidate for one expert runs with the baseline's other one
            experts[e] = runner.baseline_module(e)
        else:
            experts[e] = load_transformer(
                src, cand.loader, base.config(e), runner.device, runner.settings.torch_dtype
            )
    load_s = time.perf_counter() - t
    base_bytes = sum(base.experts[e].bytes for e in cand.experts)
    res = CandidateResult(
        cand.label,
        cand.loader,
        {e: str(s.path) for e, s in cand.experts.items()},
        cand.bytes,
        cand.bytes / base_bytes if base_bytes else math.nan,
        load_seconds=load_s,
    )
    bad = [f"{e}.{n}" for e, m in experts.items() for n in nonfinite_weights(m)]
    if bad:  # fails at once: nothing to generate
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        why = f"NaN/Inf in the candidate's weights: {', '.join(bad[:3])}{more}"
        res.items = [ItemScore(it.prompt.label, it.seed, {}, failures=[why]) for it in items]
        tick.update(len(items))
        del experts
        runner.release_baseline()
        return res
    gens = runner.run(experts, items, tick)
    for it, gen in zip(items, gens):
        score = compare(base_gens[it.index], gen, it.prompt.label, it.seed)
        res.items.append(score)
        if it.index == 0:
            res.preview = preview(gen, base_gens[it.index])
    del experts, gens
    runner.release_baseline()
    return res
