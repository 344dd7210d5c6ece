"""`weightsmith verify`: the baseline's reference generations (cached), each candidate's, the scores,
the gates and the report.

Memory holds one transformer at a time besides the VAE: the baseline runs first (only for the
items not in the cache) and is released before the first candidate loads.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weightsmith.errors import GateFailed, InputError, UsageError
from weightsmith.progress import bar
from weightsmith.verify import distributed
from weightsmith.verify.cache import BaselineCache, cache_key
from weightsmith.verify.gates import Gate, GateResult, evaluate, failure_table, frame_gates
from weightsmith.verify.inputs import (
    Prompt,
    encode_text_prompts,
    image_digest,
    load_image,
    load_prompt_file,
    read_text_prompts,
    seeded_image,
    seeded_prompt,
)
from weightsmith.verify.metrics import METRICS, ItemScore, compare, mean, worst
from weightsmith.verify.models import (
    Baseline,
    Candidate,
    Source,
    file_digest,
    load_transformer,
    load_vae,
    resolve_baseline,
    resolve_candidates,
)
from weightsmith.verify.perceptual import perceptual_notes
from weightsmith.verify.pipelines import (
    Generation,
    Parts,
    build_pipeline,
    generate,
    is_i2v,
    pipeline_class,
    place,
)
from weightsmith.verify.schedulers import SchedulerChoice, choose_scheduler
from weightsmith.verify.settings import GenerationSettings, check_options, device_kind, pick_device

SCHEMA = "weightsmith.verify/1"
PREVIEW_FRAMES = 8
PREVIEW_SIZE = 128


@dataclass
class Item:
    """One (prompt, seed) generation every model runs."""

    index: int
    prompt: Prompt
    seed: int
    image: Any = None

    @property
    def label(self) -> str:
        return f"{self.prompt.label}/seed{self.seed}"


@dataclass
class CandidateResult:
    label: str
    loader: str
    paths: dict[str, str]
    bytes: int
    size_ratio: float
    items: list[ItemScore] = field(default_factory=list)
    load_seconds: float = 0.0
    preview: np.ndarray | None = None
    worst: dict[str, float | None] = field(default_factory=dict)
    mean: dict[str, float | None] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        return [f"{it.prompt}/seed{it.seed}: {f}" for it in self.items for f in it.failures]

    @property
    def exact(self) -> bool:
        return bool(self.items) and all(it.exact for it in self.items)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)


@dataclass
class VerifyResult:
    baseline: dict[str, Any]
    settings: dict[str, Any]
    scheduler: dict[str, Any]
    notes: list[str]
    candidates: list[CandidateResult]
    gates: list[Gate]
    frames: bool
    world_size: int = 1
    cache: dict[str, Any] = field(default_factory=dict)
    baseline_preview: np.ndarray | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def gate_results(self) -> list[GateResult]:
        return [g for c in self.candidates for g in c.gates]

    def to_json(self) -> dict[str, Any]:
        from weightsmith.verify.metrics import jsonable

        return {
            "schema": SCHEMA,
            "passed": self.passed,
            "baseline": self.baseline,
            "settings": self.settings,
            "scheduler": self.scheduler,
            "frames_decoded": self.frames,
            "notes": self.notes,
            "gates": [g.text for g in self.gates],
            "world_size": self.world_size,
            "cache": self.cache,
            "seconds": round(self.seconds, 3),
            "metrics": {
                k: {"unit": v.unit, "higher_is_better": v.higher_is_better, "about": v.about}
                for k, v in METRICS.items()
            },
            "candidates": [
                {
                    "label": c.label,
                    "loader": c.loader,
                    "paths": c.paths,
                    "bytes": c.bytes,
                    "exact": c.exact,
                    "passed": c.passed,
                    "load_seconds": round(c.load_seconds, 3),
                    "metrics": {k: jsonable(v) for k, v in c.worst.items()},
                    "mean": {k: jsonable(v) for k, v in c.mean.items()},
                    "failures": c.failures,
                    "gates": [
                        {
                            "gate": g.check,
                            "metric": g.metric,
                            "value": g.value,
                            "passed": g.passed,
                            "applicable": g.applicable,
                        }
                        for g in c.gates
                    ],
                    "items": [it.as_dict() for it in c.items],
                }
                for c in self.candidates
            ],
        }


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


class _Runner:
    """Holds what every generation shares: the VAE, scheduler, settings, device, items."""

    def __init__(
        self, base: Baseline, sched: SchedulerChoice, settings: GenerationSettings, device: torch.device
    ):
        self.base, self.sched, self.settings, self.device = base, sched, settings, device
        self.vae: nn.Module | None = load_vae(base.vae, device) if base.vae is not None else None
        self._base_modules: dict[str, nn.Module] = {}

    def baseline_module(self, expert: str) -> nn.Module:
        if expert not in self._base_modules:
            src = self.base.experts[expert]
            self._base_modules[expert] = load_transformer(
                src, "weightsmith", self.base.config(expert), self.device, self.settings.torch_dtype
            )
        return self._base_modules[expert]

    def release_baseline(self) -> None:
        self._base_modules.clear()

    def parts(self, experts: dict[str, nn.Module]) -> Parts:
        two = experts.get("transformer_2")
        return Parts(
            self.base.family,
            self.base.variant,
            experts["transformer"],
            self.vae,
            self.sched,
            two,
            self.base.boundary_ratio if two is not None else None,
            self.base.expand_timesteps,
        )

    def run(
        self, experts: dict[str, nn.Module], items: list[Item], tick: Any, decode: bool = True
    ) -> list[Generation]:
        parts = self.parts(experts)
        pipe = build_pipeline(parts)
        place(pipe, self.device, self.settings.offload, self.settings.vae_tiling)
        out = []
        for it in items:
            out.append(
                generate(
                    pipe,
                    parts,
                    self.settings,
                    it.prompt,
                    it.seed,
                    it.image,
                    decode=decode and self.vae is not None,
                    device=self.device,
                )
            )
            tick.update(1)
        del pipe
        return out


def _collect(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _prompts(settings: GenerationSettings, base: Baseline, device: torch.device) -> list[Prompt] | None:
    p = settings.prompts
    if p is None:
        return None
    path = Path(p)
    if path.suffix == ".safetensors":
        return load_prompt_file(path, base.family)
    texts = read_text_prompts(path)
    if base.folder is None:
        raise UsageError(
            "text prompts need the baseline pipeline's text encoder, and BASELINE is a transformer alone",
            hint="pass the pipeline folder as BASELINE, or --prompts as a .safetensors file of embeddings",
        )
    cls = pipeline_class(base.family, base.variant)
    return encode_text_prompts(base.folder, base.family, cls, texts, settings.negative_prompt, device)


def _items(base: Baseline, settings: GenerationSettings, prompts: list[Prompt] | None) -> list[Item]:
    i2v = is_i2v(base.family, base.variant)
    fixed_image = (
        load_image(settings.image, settings.height, settings.width) if (i2v and settings.image) else None
    )
    items = []
    for seed in settings.seeds:
        plist = (
            prompts
            if prompts is not None
            else [seeded_prompt(base.family, base.config(), seed, settings.text_len)]
        )
        for p in plist:
            img = None
            if i2v:
                img = (
                    fixed_image
                    if fixed_image is not None
                    else seeded_image(seed, settings.height, settings.width)
                )
            items.append(Item(len(items), p, seed, img))
    return items


def _item_key(
    base_digest: str, sched: SchedulerChoice, settings: GenerationSettings, item: Item, base: Baseline
) -> str:
    return cache_key(
        {
            "baseline": base_digest,
            "family": base.family,
            "variant": base.variant,
            "boundary_ratio": base.boundary_ratio,
            "expand_timesteps": base.expand_timesteps,
            "settings": settings.key_material(),
            "scheduler": sched.key_material(),
            "prompt": item.prompt.digest(),
            "image": image_digest(item.image) if item.image is not None else None,
            "seed": item.seed,
        }
    )


def _preview(gen: Generation, ref: Generation | None = None) -> np.ndarray | None:
    """Up to 8 frames as uint8 [F, H, W, 3] (latents: the first three channels, scaled by the baseline's range)."""
    import torch.nn.functional as F

    if gen.frames is not None:
        fr = gen.frames
    else:
        lat = gen.latents[0].float()
        if lat.dim() == 3:
            lat = lat[:, None]
        lat = lat[:3].permute(1, 0, 2, 3)  # [F, C, H, W]
        r = ref.latents[0].float() if ref is not None else gen.latents[0].float()
        r = r[:, None] if r.dim() == 3 else r
        lo = r[:3].amin(dim=(1, 2, 3)).view(1, -1, 1, 1)
        hi = r[:3].amax(dim=(1, 2, 3)).view(1, -1, 1, 1)
        fr = ((lat - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
        if fr.shape[1] < 3:
            fr = fr.repeat(1, 3, 1, 1)[:, :3]
    idx = torch.linspace(0, fr.shape[0] - 1, min(PREVIEW_FRAMES, fr.shape[0])).round().long()
    fr = fr[idx].float().nan_to_num(0.0).clamp(0, 1)
    h, w = fr.shape[-2:]
    s = PREVIEW_SIZE / max(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    fr = F.interpolate(fr, size=size, mode="nearest" if s >= 1 else "area")
    return (fr.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()


def prepare(
    base: Baseline, settings: GenerationSettings, world: distributed.World | None = None
) -> tuple[SchedulerChoice, GenerationSettings, torch.device, list[Item]]:
    """Scheduler, resolved settings, device and the (prompt, seed) items of a reference run."""
    world = world or distributed.World()
    from weightsmith.verify.geometry import check_prompts, fit_settings

    check_options(settings)
    sched = choose_scheduler(base.family, base.variant, settings.scheduler, base.scheduler_config)
    settings, size_notes = fit_settings(base, settings, sched.steps, sched.guidance)
    for note in size_notes:
        if note not in base.notes:
            base.notes.append(note)
    device = pick_device(settings.device)
    if is_i2v(base.family, base.variant) and base.vae is None:
        raise UsageError(
            f"{base.family} {base.variant} is image-to-video: its pipeline encodes the image with the VAE",
            hint="pass --vae PATH, or the pipeline folder as BASELINE",
        )
    if settings.offload != "none" and device.type == "cpu":
        raise UsageError(
            f"--offload {settings.offload} needs a GPU (it keeps weights on the CPU and moves them to the GPU in turn)",
            hint="drop --offload on a CPU-only machine",
        )
    prompts = distributed.share_call(world, lambda: _prompts(settings, base, device))
    check_prompts(base, prompts)
    return sched, settings, device, _items(base, settings, prompts)


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
        settings=_settings_dict(settings, device),
        scheduler={"name": sched.name, "class": sched.class_name, "config": sched.config},
        notes=notes,
        candidates=results,
        gates=list(opts.gates),
        frames=base.vae is not None,
        world_size=world.size,
    )
    if gathered is None:  # not rank 0
        return result
    result.candidates = _merge([g[0] for g in gathered])
    result.baseline_preview = next((g[1] for g in gathered if g[1] is not None), None)
    result.cache = {
        "dir": str(opts.cache_dir) if opts.cache_dir else None,
        "hits": sum(g[2] for g in gathered),
        "misses": sum(g[3] for g in gathered),
    }
    for c in result.candidates:
        _aggregate(c)
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
    runner = _Runner(base, sched, settings, device)
    total = len(mine) * (1 + len(cands))
    base_gens: dict[int, Generation] = {}
    with bar(total, "verify", "gen", enabled=opts.progress and world.is_main) as tick:
        keys = {it.index: _item_key(base_digest, sched, settings, it, base) for it in mine}
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
            results.append(_run_candidate(runner, cand, base, mine, base_gens, tick))
            _collect(device)
    base_preview = _preview(base_gens[mine[0].index]) if mine and mine[0].index == 0 else None
    return results, base_preview


def _run_candidate(
    runner: _Runner,
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
            res.preview = _preview(gen, base_gens[it.index])
    del experts, gens
    runner.release_baseline()
    return res


def nonfinite_weights(model: nn.Module) -> list[str]:
    """Names of floating-point parameters and buffers holding NaN or Inf."""
    out = []
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t is None or not t.is_floating_point():
            continue
        try:
            ok = bool(torch.isfinite(t).all())
        except (NotImplementedError, RuntimeError):  # float8 and tensor subclasses (torchao)
            try:
                ok = bool(torch.isfinite(t.float()).all())
            except (NotImplementedError, RuntimeError):
                continue  # cannot be checked here; the generation will tell
        if not ok:
            out.append(name)
    return out


def _merge(per_rank: list[list[CandidateResult]]) -> list[CandidateResult]:
    merged = per_rank[0]
    for other in per_rank[1:]:
        for m, o in zip(merged, other):
            m.items.extend(o.items)
            m.load_seconds = max(m.load_seconds, o.load_seconds)
            if m.preview is None:
                m.preview = o.preview
    for m in merged:
        m.items.sort(key=lambda it: (it.seed, it.prompt))
    return merged


def _aggregate(c: CandidateResult) -> None:
    for name, info in METRICS.items():
        if name in ("size_ratio", "time_ratio"):
            continue
        vals = [it.metrics.get(name) for it in c.items]
        c.worst[name] = worst(vals, info.higher_is_better)
        c.mean[name] = mean(vals)
    c.worst["size_ratio"] = c.mean["size_ratio"] = c.size_ratio
    bs = sum(it.base_seconds for it in c.items)
    tr = sum(it.cand_seconds for it in c.items) / bs if bs > 0 else None
    c.worst["time_ratio"] = c.mean["time_ratio"] = tr
    for k in [k for k, v in c.worst.items() if v is None and k == "lpips"]:
        c.worst.pop(k)
        c.mean.pop(k, None)


def _settings_dict(s: GenerationSettings, device: torch.device) -> dict[str, Any]:
    return {
        "height": s.height,
        "width": s.width,
        "frames": s.frames,
        "steps": s.steps,
        "guidance": s.guidance,
        "seeds": list(s.seeds),
        "dtype": s.dtype,
        "device": device_kind(device),
        "offload": s.offload,
        "vae_tiling": s.vae_tiling,
        "image": s.image,
        "prompts": s.prompts,
    }


def check_gates(result: VerifyResult) -> None:
    """Raise GateFailed (exit 1) naming every failed gate and check."""
    bad = [g for g in result.gate_results() if not g.passed]
    if not bad:
        return
    named = "; ".join(f"{g.candidate}: {g.check} ({g.value})" for g in bad[:4])
    more = f" and {len(bad) - 4} more" if len(bad) > 4 else ""
    raise GateFailed(f"{len(bad)} verification gate(s) failed: {named}{more}", hint="see the table above")


def summary_table(result: VerifyResult) -> str:
    """A plain-text table of the main metrics per candidate."""
    from weightsmith.verify.gates import format_value

    cols = ["latent_sqnr", "latent_cosine"] + (
        ["psnr", "ssim", "flicker"] if result.frames else ["latent_psnr"]
    )
    cols += ["size_ratio", "time_ratio"]
    head = ["candidate", *cols, "result"]
    rows = []
    for c in result.candidates:
        res = "exact" if c.exact and c.passed else ("pass" if c.passed else "FAIL")
        rows.append([c.label, *[format_value(c.worst.get(k)) for k in cols], res])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head)] + [fmt.format(*r) for r in rows]
    table = failure_table(result.gate_results())
    if table:
        lines += ["", "failed:", table]
    return "\n".join(lines)
