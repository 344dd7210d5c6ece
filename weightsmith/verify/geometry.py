"""Generation sizes checked against the model before anything runs, and defaults taken from it.

diffusers checks little of what a size does to the model: a rotary table too short for the
latent grid ends in a RuntimeError deep in a forward pass; a model with learned positional
embeddings runs at its sample size only; a positional table that includes the text tokens breaks
on prompt embeddings of another length; sizes that are not multiples of the VAE and patch
factors are rounded down with a warning, so the recorded settings would not be what ran. The
family's generation adapter says what its model accepts (``Generation.geometry``); every size
that does not fit is refused here with a message naming what fits, and sizes the user did not
give are chosen so they fit.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from weightsmith.errors import UsageError
from weightsmith.families.generation import Geometry
from weightsmith.verify.family import generation
from weightsmith.verify.settings import MAX_FRAMES, MAX_SIDE, GenerationSettings

__all__ = ["Geometry", "check_prompts", "fit_settings", "geometry"]


def _signature_defaults(cls: Any) -> dict[str, Any]:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _class_config(
    family: str, component: str, variant: str | None, cfg: dict[str, Any] | None
) -> dict[str, Any]:
    """A component's config as the loaded module will see it: the class's defaults under the file's."""
    from weightsmith.families import get_component

    try:
        defaults = _signature_defaults(get_component(family, component).model_class(variant))
    except Exception:  # noqa: BLE001 - no class known: the file's config alone
        defaults = {}
    return {**defaults, **(cfg or {})}


def geometry(base: Any) -> Geometry:
    """What ``base`` (a resolved Baseline) accepts, from its transformer and VAE configs.

    The family's generation adapter reads the configs; the model's own bounds are then held to
    what a user may ask for at all (MAX_SIDE, MAX_FRAMES).
    """
    fam = base.family
    tcfg = _class_config(fam, "transformer", base.variant, base.config("transformer"))
    vae = base.vae
    vcfg = _class_config(fam, "vae", vae.detection.variant, vae.config) if vae is not None else None
    expert_cfgs = [_class_config(fam, "transformer", base.variant, base.config(e)) for e in base.experts]
    geo = generation(fam).geometry(tcfg, vcfg, expert_cfgs)

    def side(v: int | None, mul: int) -> int:
        return MAX_SIDE if v is None else min(v, MAX_SIDE // mul * mul)

    return dataclasses.replace(
        geo,
        family=fam,
        max_height=side(geo.max_height, geo.h_multiple),
        max_width=side(geo.max_width, geo.w_multiple),
        max_frames=MAX_FRAMES if geo.max_frames is None else min(geo.max_frames, MAX_FRAMES),
    )


def fit_settings(
    base: Any, settings: GenerationSettings, scheduler_steps: int | None, guidance: float | None
) -> tuple[GenerationSettings, list[str]]:
    """``settings`` resolved for ``base``: defaults that fit the model, given sizes checked.

    A size the user gave that the model cannot take is a usage error naming what fits; a size
    left out is the family's default, or the model's own smaller sample size (a model trained
    small), clipped to what the model's positional tables hold. Returns the notes to show.
    """
    geo = geometry(base)
    notes: list[str] = []
    d = generation(base.family).defaults
    dh, dw, df = d.height, d.width, d.frames
    if geo.sample_hw is not None:
        dh, dw = min(dh, geo.sample_hw[0]), min(dw, geo.sample_hw[1])
    if geo.sample_frames is not None:
        df = min(df, geo.sample_frames)
    if geo.fixed_hw is not None:
        dh, dw = geo.fixed_hw
    dh = max(geo.h_multiple, dh // geo.h_multiple * geo.h_multiple)
    dw = max(geo.w_multiple, dw // geo.w_multiple * geo.w_multiple)
    if geo.temporal:
        df = (df - 1) // geo.temporal * geo.temporal + 1
    clipped = []
    if settings.height is None and dh > geo.max_height:
        dh, clipped = geo.max_height, [*clipped, "height"]
    if settings.width is None and dw > geo.max_width:
        dw, clipped = geo.max_width, [*clipped, "width"]
    if settings.frames is None and geo.temporal and df > geo.max_frames:
        df, clipped = geo.max_frames, [*clipped, "frames"]
    if clipped:
        notes.append(
            f"default {'/'.join(clipped)} reduced to {dh}x{dw}"
            + (f", {df} frames" if geo.temporal else "")
            + f": this model's {geo.why_max} fits no more"
        )
    filled = dataclasses.replace(
        settings,
        height=settings.height or dh,
        width=settings.width or dw,
        frames=settings.frames or df,
    )
    out = filled.resolved(base.family, scheduler_steps, guidance)
    _check_size(geo, out, settings)
    _check_text_len(geo, out)
    return out, notes


def _check_size(geo: Geometry, s: GenerationSettings, given: GenerationSettings) -> None:
    fam = geo.family
    h, w = int(s.height or 0), int(s.width or 0)
    for name, v, mul in (("--height", h, geo.h_multiple), ("--width", w, geo.w_multiple)):
        if v % mul:
            top = geo.max_height if name == "--height" else geo.max_width
            lo, hi = max(mul, v // mul * mul), (v // mul + 1) * mul
            also = f" or {hi}" if hi <= top and lo != hi else ""
            raise UsageError(
                f"{geo.pipeline} refused the generation settings: {name} {v} is not a "
                f"multiple of {mul}, which this {fam} model needs (its VAE and patch factors)",
                hint=f"pass {name} {min(lo, top)}{also}",
            )
    if geo.fixed_hw is not None and (h, w) != geo.fixed_hw:
        fh, fw = geo.fixed_hw
        raise UsageError(
            f"this {fam} model has learned positional embeddings for {fh}x{fw} pixels only; "
            f"{h}x{w} was asked for",
            hint=f"pass --height {fh} --width {fw}, or leave both out",
        )
    for name, v, top in (("--height", h, geo.max_height), ("--width", w, geo.max_width)):
        if v > top:
            why = f": {geo.why_max}" if geo.why_max else ""
            raise UsageError(
                f"{name} {v} is larger than this {fam} model takes (at most {top}{why})",
                hint=f"pass {name} {top} or less, a multiple of {geo.h_multiple}",
            )
    if geo.temporal and given.frames is not None:
        f = int(s.frames or 0)
        if f > geo.max_frames:
            why = f": {geo.why_max}" if geo.why_max else ""
            raise UsageError(
                f"--frames {f} is more than this {fam} model takes (at most {geo.max_frames}{why})",
                hint=f"pass --frames {geo.max_frames} or less",
            )
        if (f - 1) % geo.temporal:
            lo = (f - 1) // geo.temporal * geo.temporal + 1
            up = f" or {lo + geo.temporal}" if lo + geo.temporal <= geo.max_frames else ""
            raise UsageError(
                f"--frames {f} does not fit this {fam} model's VAE, which takes {geo.temporal}k+1 frames",
                hint=f"pass --frames {lo}{up}",
            )


def _check_text_len(geo: Geometry, s: GenerationSettings) -> None:
    if geo.text_len is not None and s.text_len is not None and s.text_len != geo.text_len:
        raise UsageError(
            f"--text-len {s.text_len} does not fit this {geo.family} model: its positional table "
            f"covers exactly {geo.text_len} text tokens (max_text_seq_length)",
            hint=f"pass --text-len {geo.text_len}, or leave it out",
        )


def check_prompts(base: Any, prompts: list[Any] | None) -> None:
    """Prompt embeddings from ``--prompts`` shaped for this transformer, or a usage error."""
    if not prompts:
        return
    geo = geometry(base)
    for p in prompts:
        for name, t in (("prompt_embeds", p.embeds), ("negative_prompt_embeds", p.negative)):
            if t is None:
                continue
            if not t.is_floating_point():
                raise UsageError(
                    f"--prompts {name} has dtype {str(t.dtype).replace('torch.', '')}, not floating point",
                    hint="save the embeddings as float32, float16 or bfloat16",
                )
            _, length, width = t.shape
            if geo.text_width is not None and width != geo.text_width:
                raise UsageError(
                    f"--prompts {name} are {width} wide, but this {geo.family} model takes "
                    f"{geo.text_width}-wide text embeddings",
                    hint="encode the prompts with this model's text encoder",
                )
            if geo.text_len is not None and length != geo.text_len:
                raise UsageError(
                    f"--prompts {name} have {length} tokens, but this {geo.family} model's positional "
                    f"table covers exactly {geo.text_len}",
                    hint=f"pad or cut the embeddings to {geo.text_len} tokens",
                )
        if p.negative is not None and tuple(p.negative.shape) != tuple(p.embeds.shape):
            raise UsageError(
                f"--prompts negative_prompt_embeds {list(p.negative.shape)} differ in shape from "
                f"prompt_embeds {list(p.embeds.shape)}",
                hint="save both with the same [N, tokens, width]",
            )
        for name, m, ref in (
            ("prompt_attention_mask", p.mask, p.embeds),
            ("negative_prompt_attention_mask", p.negative_mask, p.negative),
        ):
            if m is not None and ref is not None and tuple(m.shape) != tuple(ref.shape[:2]):
                raise UsageError(
                    f"--prompts {name} {list(m.shape)} does not match its embeddings' [1, {ref.shape[1]}]",
                    hint="save one mask row per prompt, one entry per token",
                )
