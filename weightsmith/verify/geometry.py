"""Generation sizes checked against the model before anything runs, and defaults taken from it.

diffusers checks little of what a size does to the model: Wan's rotary table (``rope_max_seq_len``
positions per axis) silently falls short and ends in a RuntimeError deep in a forward pass; a
CogVideoX model with learned positional embeddings (5B I2V) runs at its sample size only; the
CogVideoX positional table includes the text tokens, so prompt embeddings of another length
break the addition; sizes that are not multiples of the VAE and patch factors are rounded down
with a warning, so the recorded settings would not be what ran. Every such case is refused here
with a message naming what fits, and sizes the user did not give are chosen so they fit.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass
from typing import Any

from weightsmith.errors import UsageError
from weightsmith.verify.settings import FAMILY_DEFAULTS, MAX_FRAMES, MAX_SIDE, GenerationSettings


@dataclass(frozen=True)
class Geometry:
    """What one model accepts: pixel multiples, upper bounds, fixed sizes, the text length."""

    family: str
    h_multiple: int
    w_multiple: int
    temporal: int  # video frames are temporal*k + 1; 0 for image families
    max_height: int = MAX_SIDE
    max_width: int = MAX_SIDE
    max_frames: int = MAX_FRAMES
    why_max: str = ""  # what sets the upper bounds (the rotary table)
    fixed_hw: tuple[int, int] | None = None  # learned positional embeddings: this size only
    text_len: int | None = None  # prompt tokens the positional table fixes
    text_width: int | None = None
    sample_hw: tuple[int, int] | None = None  # the model's own sample size, when it has one
    sample_frames: int | None = None


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


def _int(cfg: dict[str, Any], key: str, default: int) -> int:
    """A positive integer setting; anything else (a hostile config) is a usage error, not a crash."""
    v = cfg.get(key, default)
    if v is None:
        v = default
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v > 2**31:
        raise UsageError(
            f"the model's config has {key} = {str(v)[:40]!r}, not a positive whole number",
            hint="fix the model's config.json",
        )
    return v


def _blocks(cfg: dict[str, Any], key: str, default: int) -> int:
    """How many VAE blocks a config lists (the pipeline's spatial factor is 2**(n-1))."""
    v = cfg.get(key)
    if v is None:
        return default
    if not isinstance(v, (list, tuple)) or not 1 <= len(v) <= 16:
        raise UsageError(
            f"the VAE config has {key} = {str(v)[:40]!r}, not a list of block widths",
            hint="fix the VAE's config.json",
        )
    return len(v)


def _lcm(a: int, b: int) -> int:
    return a * b // math.gcd(a, b)


def geometry(base: Any) -> Geometry:
    """What ``base`` (a resolved Baseline) accepts, from its transformer and VAE configs."""
    fam = base.family
    tcfg = _class_config(fam, "transformer", base.variant, base.config("transformer"))
    vae = base.vae
    vcfg = _class_config(fam, "vae", vae.detection.variant, vae.config) if vae is not None else None
    if fam == "wan":
        spatial = _int(vcfg, "scale_factor_spatial", 8) if vcfg else 8
        temporal = _int(vcfg, "scale_factor_temporal", 4) if vcfg else 4
        patch = tcfg.get("patch_size") or (1, 2, 2)
        if not (isinstance(patch, (list, tuple)) and len(patch) == 3):
            raise UsageError(f"the model's config has patch_size = {str(patch)[:40]!r}, not 3 numbers")
        p_t, p_h, p_w = (_int({"patch_size": x}, "patch_size", 1) for x in patch)
        rope = min(
            _int(_class_config(fam, "transformer", base.variant, base.config(e)), "rope_max_seq_len", 1024)
            for e in base.experts
        )
        h_mul, w_mul = _lcm(16, spatial * p_h), _lcm(16, spatial * p_w)
        # Positions per axis after the VAE and the patch embedding must fit the rotary table.
        max_h = rope * p_h * spatial // h_mul * h_mul
        max_w = rope * p_w * spatial // w_mul * w_mul
        max_latent_frames = (rope + 1) * p_t - 1
        return Geometry(
            fam,
            h_mul,
            w_mul,
            temporal,
            max_height=min(max_h, MAX_SIDE // h_mul * h_mul),
            max_width=min(max_w, MAX_SIDE // w_mul * w_mul),
            max_frames=min((max_latent_frames - 1) * temporal + 1, MAX_FRAMES),
            why_max=f"its rotary table holds {rope} positions per axis (rope_max_seq_len)",
            text_width=_int(tcfg, "text_dim", 4096),
        )
    if fam == "cogvideox":
        spatial = 2 ** (_blocks(vcfg, "block_out_channels", 4) - 1) if vcfg else 8
        temporal = _int(vcfg, "temporal_compression_ratio", 4) if vcfg else 4
        patch = _int(tcfg, "patch_size", 2)
        mul = _lcm(8, spatial * patch)
        sample_hw = (_int(tcfg, "sample_height", 60) * spatial, _int(tcfg, "sample_width", 90) * spatial)
        learned = bool(tcfg.get("use_learned_positional_embeddings"))
        rotary = bool(tcfg.get("use_rotary_positional_embeddings"))
        table = learned or not rotary  # the positional table covers the text tokens too
        limits: dict[str, Any] = {}
        if rotary and tcfg.get("patch_size_t") is not None:
            # CogVideoX 1.5 slices its rotary table, sample_height/patch x sample_width/patch
            # positions, to the latent grid: a larger grid runs off its end.
            rows, cols = _int(tcfg, "sample_height", 60) // patch, _int(tcfg, "sample_width", 90) // patch
            limits = {
                "max_height": min(max(rows, 1) * patch * spatial, MAX_SIDE) // mul * mul,
                "max_width": min(max(cols, 1) * patch * spatial, MAX_SIDE) // mul * mul,
                "why_max": f"its rotary table holds {rows}x{cols} positions (sample_height/width over the patch size)",
            }
        return Geometry(
            fam,
            mul,
            mul,
            temporal,
            **limits,
            fixed_hw=sample_hw if learned else None,
            text_len=_int(tcfg, "max_text_seq_length", 226) if table else None,
            text_width=_int(tcfg, "text_embed_dim", 4096),
            sample_hw=sample_hw,
            sample_frames=_int(tcfg, "sample_frames", 49),
        )
    if fam == "sana":
        if vcfg:
            spatial = 2 ** (_blocks(vcfg, "encoder_block_out_channels", 6) - 1)
        else:
            spatial = 32
        patch = _int(tcfg, "patch_size", 1)
        mul = _lcm(32, spatial * patch)
        side = _int(tcfg, "sample_size", 32) * spatial
        return Geometry(
            fam,
            mul,
            mul,
            0,
            text_width=_int(tcfg, "caption_channels", 2304),
            sample_hw=(side, side),
        )
    raise UsageError(f"no generation sizes known for family {fam!r}")


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
    dh, dw, df, _, _ = FAMILY_DEFAULTS[base.family]
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
                f"{_pipeline_name(geo)} refused the generation settings: {name} {v} is not a "
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


def _pipeline_name(geo: Geometry) -> str:
    """The diffusers pipeline that would refuse (or silently round) the size, for the message."""
    return {"wan": "WanPipeline", "cogvideox": "CogVideoXPipeline", "sana": "SanaPipeline"}[geo.family]


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
