"""Fidelity metrics: a candidate's generation scored against the baseline's, under stable names.

Latents (always): ``latent_sqnr`` (dB), ``latent_cosine``, ``latent_psnr`` (dB, peak = the
baseline's value range), ``latent_max_abs``; per denoising step, cosine and SQNR (where drift
starts). Decoded frames (with a VAE), values in [0, 1]: ``psnr`` (dB, over all frames),
``psnr_frame_min``, ``ssim`` (mean of per-frame SSIM, Gaussian window 11 / sigma 1.5),
``ssim_frame_min``, ``flicker`` (how much the mean frame-to-frame change differs from the
baseline's). Identical outputs score exactly: SQNR and PSNR ``inf``, cosine and SSIM ``1.0``,
differences ``0.0``. Non-finite values and frames that went black or constant are failures on
their own, whatever the gates say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from weightsmith.verify.pipelines import Generation


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    needs_frames: bool
    unit: str
    about: str


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("latent_sqnr", True, False, "dB", "SQNR of the final latents"),
        MetricInfo("latent_cosine", True, False, "", "cosine similarity of the final latents"),
        MetricInfo("latent_psnr", True, False, "dB", "PSNR of the final latents (peak: baseline range)"),
        MetricInfo("latent_max_abs", False, False, "", "largest absolute difference of the final latents"),
        MetricInfo("step_cosine_min", True, False, "", "lowest per-step latent cosine"),
        MetricInfo("step_sqnr_min", True, False, "dB", "lowest per-step latent SQNR"),
        MetricInfo("psnr", True, True, "dB", "PSNR of all decoded frames (range 1)"),
        MetricInfo("psnr_frame_min", True, True, "dB", "PSNR of the worst frame"),
        MetricInfo("ssim", True, True, "", "mean per-frame SSIM"),
        MetricInfo("ssim_frame_min", True, True, "", "SSIM of the worst frame"),
        MetricInfo("flicker", False, True, "", "|mean frame-to-frame change - baseline's|"),
        MetricInfo("size_ratio", False, False, "", "candidate bytes / baseline bytes"),
        MetricInfo("time_ratio", False, False, "", "candidate seconds / baseline seconds"),
        MetricInfo("lpips", False, True, "", "LPIPS distance (only with local weights)"),
        MetricInfo(
            "prompt_sqnr", True, False, "dB", "SQNR of the prompt embeddings (text-encoder candidates)"
        ),
        MetricInfo(
            "prompt_cosine", True, False, "", "cosine of the prompt embeddings (text-encoder candidates)"
        ),
    )
}
# Scored only where a candidate is a text encoder: absent, not None, elsewhere.
PROMPT_METRICS = ("prompt_sqnr", "prompt_cosine")
# Measurements that vary between runs by nature (not fidelity): left out of determinism checks.
TIMING = ("time_ratio",)
COLLAPSE_RANGE = 1.0 / 255.0


@dataclass
class ItemScore:
    """One (prompt, seed) comparison."""

    prompt: str
    seed: int
    metrics: dict[str, float | None]
    step_cosine: list[float] = field(default_factory=list)
    step_sqnr: list[float] = field(default_factory=list)
    frame_psnr: list[float] = field(default_factory=list)
    frame_ssim: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    exact: bool = False
    base_seconds: float = 0.0
    cand_seconds: float = 0.0
    flicker_pair: tuple[float, float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "seed": self.seed,
            "exact": self.exact,
            "metrics": {k: jsonable(v) for k, v in self.metrics.items()},
            "steps": {
                "cosine": [jsonable(x) for x in self.step_cosine],
                "sqnr": [jsonable(x) for x in self.step_sqnr],
            },
            "frames": {
                "psnr": [jsonable(x) for x in self.frame_psnr],
                "ssim": [jsonable(x) for x in self.frame_ssim],
            },
            "failures": list(self.failures),
            "seconds": {"baseline": round(self.base_seconds, 4), "candidate": round(self.cand_seconds, 4)},
        }


def jsonable(v: float | None) -> float | str | None:
    """JSON has no infinities: they are written as the strings "inf" / "-inf"."""
    if v is None:
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return v


def from_json(v: Any) -> float | None:
    if isinstance(v, str):
        return float(v)
    return v


def sqnr(ref: torch.Tensor, x: torch.Tensor) -> float:
    """10 log10(sum ref^2 / sum (ref - x)^2) in dB; inf when identical."""
    r = ref.double()
    noise = (r - x.double()).pow(2).sum().item()
    signal = r.pow(2).sum().item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine(ref: torch.Tensor, x: torch.Tensor) -> float:
    """Cosine similarity of the flattened tensors; exactly 1.0 when identical."""
    if torch.equal(ref, x):
        return 1.0
    a, b = ref.double().flatten(), x.double().flatten()
    na, nb = a.norm().item(), b.norm().item()
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float((a @ b).item() / (na * nb))


def psnr(ref: torch.Tensor, x: torch.Tensor, peak: float = 1.0) -> float:
    """10 log10(peak^2 / MSE) in dB; inf when identical."""
    mse = (ref.double() - x.double()).pow(2).mean().item()
    if mse == 0:
        return math.inf
    if peak <= 0:
        return -math.inf
    return 10.0 * math.log10(peak * peak / mse)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    return g / g.sum()


def ssim_frames(ref: torch.Tensor, x: torch.Tensor, data_range: float = 1.0) -> list[float]:
    """Per-frame SSIM of [F, C, H, W] frames (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03),
    averaged over channels and valid window positions; frames smaller than the window use a smaller one."""
    f, c, h, w = ref.shape
    size = min(11, h, w)
    size -= 1 - size % 2  # odd
    sigma = 1.5 * size / 11
    g = _gaussian(size, sigma)
    win = (g[:, None] * g[None, :]).expand(c, 1, size, size).contiguous()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    a, b = ref.double(), x.double()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, win, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    saa = blur(a * a) - mu_a * mu_a
    sbb = blur(b * b) - mu_b * mu_b
    sab = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (saa + sbb + c2)
    per = (num / den).mean(dim=(1, 2, 3))
    out = [float(v) for v in per]
    for i in range(f):  # identical frames score exactly 1
        if torch.equal(ref[i], x[i]):
            out[i] = 1.0
    return out


def temporal_change(frames: torch.Tensor) -> float | None:
    """Mean absolute change between consecutive frames (VBench's flicker measure, range 1)."""
    if frames.shape[0] < 2:
        return None
    return float((frames[1:].double() - frames[:-1].double()).abs().mean().item())


def collapsed_frames(ref: torch.Tensor, x: torch.Tensor) -> list[str]:
    """Frames that went black or constant in the candidate while the baseline's were not."""
    out = []
    for i in range(x.shape[0]):
        cmax, cmin = float(x[i].max()), float(x[i].min())
        rmax, rmin = float(ref[i].max()), float(ref[i].min())
        if cmax < COLLAPSE_RANGE and rmax >= COLLAPSE_RANGE:
            out.append(f"frame {i} is black")
        elif cmax - cmin < COLLAPSE_RANGE and rmax - rmin >= COLLAPSE_RANGE:
            out.append(f"frame {i} is constant")
    return out


def compare(base: Generation, cand: Generation, prompt: str, seed: int) -> ItemScore:
    """Score one candidate generation against the baseline's."""
    m: dict[str, float | None] = {}
    item = ItemScore(prompt, seed, m, base_seconds=base.seconds, cand_seconds=cand.seconds)
    n = min(len(base.steps), len(cand.steps))
    item.step_cosine = [cosine(base.steps[i], cand.steps[i]) for i in range(n)]
    item.step_sqnr = [sqnr(base.steps[i], cand.steps[i]) for i in range(n)]
    if not cand.finite:
        where = "decoded frames" if cand.nonfinite_step == len(base.steps) else f"step {cand.nonfinite_step}"
        item.failures.append(f"NaN/Inf in the candidate's {where}")
        for k in METRICS:
            m[k] = None
        return item
    bl, cl = base.latents, cand.latents
    if bl.shape != cl.shape:
        item.failures.append(f"latents shaped {tuple(cl.shape)}, baseline {tuple(bl.shape)}")
        return item
    m["latent_sqnr"] = sqnr(bl, cl)
    m["latent_cosine"] = cosine(bl, cl)
    m["latent_psnr"] = psnr(bl, cl, float(bl.max() - bl.min()))
    m["latent_max_abs"] = float((bl.double() - cl.double()).abs().max().item())
    m["step_cosine_min"] = min(item.step_cosine) if item.step_cosine else None
    m["step_sqnr_min"] = min(item.step_sqnr) if item.step_sqnr else None
    exact = torch.equal(bl, cl) and all(torch.equal(a, b) for a, b in zip(base.steps, cand.steps))
    if base.frames is not None and cand.frames is not None:
        bf, cf = base.frames, cand.frames
        m["psnr"] = psnr(bf, cf)
        item.frame_psnr = [psnr(bf[i], cf[i]) for i in range(bf.shape[0])]
        m["psnr_frame_min"] = min(item.frame_psnr)
        item.frame_ssim = ssim_frames(bf, cf)
        m["ssim"] = (
            1.0 if all(v == 1.0 for v in item.frame_ssim) else sum(item.frame_ssim) / len(item.frame_ssim)
        )
        m["ssim_frame_min"] = min(item.frame_ssim)
        tb, tc = temporal_change(bf), temporal_change(cf)
        m["flicker"] = None if tb is None or tc is None else abs(tc - tb)
        item.flicker_pair = None if tb is None or tc is None else (tb, tc)
        item.failures.extend(collapsed_frames(bf, cf))
        exact = exact and torch.equal(bf, cf)
        from weightsmith.verify.perceptual import lpips_scorer

        scorer = lpips_scorer()
        if scorer is not None and min(bf.shape[-2:]) >= 32:
            m["lpips"] = 0.0 if exact else scorer(bf, cf)
    item.exact = exact
    return item


def worst(values: list[float | None], higher_is_better: bool) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return min(vals) if higher_is_better else max(vals)


def mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None
