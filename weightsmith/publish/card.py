"""The model card: YAML front matter the Hub understands, then the measured fidelity of every
file (from the verify reports, with the settings it was measured at), the fidelity-against-size
plot, and how to load the files with diffusers and ComfyUI.

Front matter keys are the Hub's own (hub-docs model-cards): ``base_model``,
``base_model_relation: quantized`` (so the Hub lists the repo under the base's quantizations),
``library_name``, ``license`` and ``pipeline_tag`` (from the base's card when it is at hand),
``quantized_by`` and ``tags``. Nothing in the card comes from the environment (no token, no
user name).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import weightsmith.verify.report.svg as svg
from weightsmith._version import __version__
from weightsmith.families import get_component
from weightsmith.inspect import human_size
from weightsmith.publish.discover import DIFFUSERS, GGUF, Artifact, Evidence
from weightsmith.publish.folder import EXPERT_FOLDERS, PLOT, SUMS, Plan, expert_folder, pair_variant
from weightsmith.verify.family import generation, reads_gguf
from weightsmith.verify.gates import format_value

_HUB_CACHE = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/")
METRICS = (("latent_sqnr", "latent SQNR dB"), ("psnr", "PSNR dB"), ("ssim", "SSIM"))


@dataclass
class Base:
    """What is known of the base model: its repo id and what its own card says."""

    model: str | None = None
    license: str | None = None
    pipeline_tag: str | None = None
    notes: list[str] = field(default_factory=list)


def _baseline_paths(arts: list[Artifact]) -> list[Path]:
    out = []
    for a in arts:
        for ev in a.evidence:
            label = str(ev.baseline.get("label") or "")
            if label:
                p = Path(label)
                out += [p] if p.is_absolute() else [p, ev.report.parent / p]
    return out


def base_facts(arts: list[Artifact], base_model: str | None, license: str | None) -> Base:
    """The base model's id (``--base-model``, else a Hub cache path of the verified baseline) and
    the license and pipeline tag its README.md front matter gives, when the baseline is at hand."""
    from huggingface_hub.repocard import metadata_load

    base = Base(model=base_model, license=license)
    for p in _baseline_paths(arts):
        m = _HUB_CACHE.search(p.resolve().as_posix() + "/")
        if base.model is None and m:
            base.model = f"{m.group(1)}/{m.group(2)}"
        readme = p / "README.md" if p.is_dir() else p.parent / "README.md"
        if readme.is_file() and readme.stat().st_size < 2**20:
            try:
                meta = metadata_load(readme) or {}
            except (yaml.YAMLError, ValueError, UnicodeDecodeError):
                continue
            if base.license is None and isinstance(meta.get("license"), str):
                base.license = meta["license"]
            if base.pipeline_tag is None and isinstance(meta.get("pipeline_tag"), str):
                base.pipeline_tag = meta["pipeline_tag"]
    return base


def _pipeline_tag(a: Artifact) -> str | None:
    if a.family is None:
        return None
    gen = generation(a.family)
    if gen.defaults.frames <= 1:
        return "text-to-image"
    return "image-to-video" if gen.is_i2v(a.variant or "") else "text-to-video"


def front_matter(p: Plan, base: Base, quantized_by: str) -> dict[str, Any]:
    """The card's metadata, known Hub keys only, in a stable order."""
    first = p.artifacts[0]
    tag = base.pipeline_tag or _pipeline_tag(first)
    tags = [t for t in (p.library, "quantized", "weightsmith", first.family, tag) if t]
    if p.library is None:
        tags[:0] = ["diffusion-single-file", "comfyui"]
    meta: dict[str, Any] = {}
    if base.model:
        meta["base_model"] = base.model
        meta["base_model_relation"] = "quantized"
    if p.library:
        meta["library_name"] = p.library
    if base.license:
        meta["license"] = base.license
    if tag:
        meta["pipeline_tag"] = tag
    meta["quantized_by"] = quantized_by
    meta["tags"] = list(dict.fromkeys(tags))
    return meta


def _value(v: Any) -> float | None:
    if isinstance(v, str):
        return {"inf": math.inf, "-inf": -math.inf}.get(v)
    return float(v) if isinstance(v, (int, float)) else None


def worst(evidence: list[Evidence], metric: str) -> float | None:
    """The worst value any loader measured (lowest for these higher-is-better metrics)."""
    vals = [v for ev in evidence if (v := _value(ev.metrics.get(metric))) is not None]
    return min(vals) if vals else None


def _settings_line(ev: Evidence) -> str:
    s = ev.settings
    frames = f"{s.get('frames')} frame(s), " if s.get("frames") else ""
    gates = ", ".join(f"`{g}`" for g in ev.gates) or "the built-in checks only"
    return (
        f"{s.get('height')}x{s.get('width')}, {frames}{s.get('steps')} steps, guidance {s.get('guidance')}, "
        f"scheduler {ev.scheduler}, seeds {s.get('seeds')}, {s.get('dtype')} on {s.get('device')}; "
        f"baseline `{Path(str(ev.baseline.get('label', '?'))).name}`; gates {gates}"
    )


def _status(a: Artifact) -> str:
    if a.status == "verified":
        return "pass"
    if a.status == "failed":
        failed = sorted({f for ev in a.evidence for f in ev.failed})
        return "FAIL: " + ", ".join(failed) if failed else "FAIL"
    return "not verified"


def warning_lines(p: Plan) -> list[str]:
    """The card's first lines when a file is published without passing verification."""
    bad = [a for a in p.artifacts if a.status != "verified"]
    if not bad:
        return []
    what = "; ".join(f"`{p.name_of(a)}` ({_status(a).lower()})" for a in bad)
    return [
        f"> **Warning: not verified.** Published with `--allow-unverified`: {what}. Their fidelity to the "
        "base model was not shown by weightsmith verify; treat them as untested.",
        "",
    ]


def files_table(p: Plan) -> tuple[list[str], list[str]]:
    """The table of files (size, scheme, measured fidelity) and the settings footnotes."""
    notes: dict[str, int] = {}
    head = "| file | size | scheme | " + " | ".join(t for _, t in METRICS) + " | verify | measured at |"
    lines = [head, "|---|---:|---|" + "---:|" * len(METRICS) + "---|---|"]
    for a in p.artifacts:
        refs = []
        for ev in a.evidence:
            line = _settings_line(ev)
            notes.setdefault(line, len(notes) + 1)
            refs.append(f"[{notes[line]}]")
        vals = " | ".join(format_value(worst(a.evidence, k)) if a.evidence else "-" for k, _ in METRICS)
        where = " ".join(dict.fromkeys(refs)) or "-"
        lines.append(
            f"| `{p.name_of(a)}` | {human_size(a.bytes)} | {a.scheme} | {vals} | {_status(a)} | {where} |"
        )
    foot = [f"{i}. {line}" for line, i in notes.items()]
    return lines, foot


def plot(p: Plan) -> str | None:
    """Fidelity against file size, one point per file (None when nothing was measured)."""
    frames = any(ev.frames for a in p.artifacts for ev in a.evidence)
    metric, label = ("psnr", "PSNR dB (worst)") if frames else ("latent_sqnr", "latent SQNR dB (worst)")
    pts = [(a.scheme, a.bytes / 1e9, worst(a.evidence, metric), 0) for a in p.artifacts if a.evidence]
    if not any(y is not None for _, _, y, _ in pts):
        return None
    return svg.scatter(pts, "Fidelity against size", "file size (GB)", label)


def _gguf_usage(p: Plan, a: Artifact, base: Base) -> list[str]:
    comp = get_component(a.family, "transformer") if a.family else None
    cls = comp.class_name(a.variant) if comp else "<TransformerClass>"
    pair = pair_variant(a)
    lines = ["```python", "import torch", f"from diffusers import GGUFQuantizationConfig, {cls}", ""]
    experts = [b for b in p.artifacts if b.kind == GGUF and (b is a or (pair and b.path == a.partner))]
    for b in experts:
        var = "transformer" if b is a else "transformer_2"
        lines += [
            f"{var} = {cls}.from_single_file(",
            f'    "https://huggingface.co/{p.repo_id}/blob/main/{p.name_of(b)}",',
            "    quantization_config=GGUFQuantizationConfig(compute_dtype=torch.bfloat16),",
            "    torch_dtype=torch.bfloat16,",
            ")",
        ]
    pipe = _pipeline_name(a, pair)
    if pipe and base.model:
        args = ", ".join(
            ("transformer=transformer", *(["transformer_2=transformer_2"] if len(experts) > 1 else []))
        )
        lines += [
            f"pipe = {pipe}.from_pretrained(",
            f'    "{base.model}", {args}, torch_dtype=torch.bfloat16',
            ")",
        ]
    return [*lines, "```"]


def _pipeline_name(a: Artifact, pair: str | None) -> str | None:
    if a.family is None:
        return None
    try:
        return generation(a.family).pipeline_class(pair or a.variant or "").__name__
    except Exception:  # noqa: BLE001 - no pipeline known: the snippet stops at the transformer
        return None


def usage(p: Plan, base: Base) -> list[str]:
    """How to run the files: diffusers, then ComfyUI."""
    firsts = [b for b in p.artifacts if expert_folder(b) in (None, EXPERT_FOLDERS[0])] or p.artifacts
    a = next((b for b in reversed(firsts) if b.status == "verified"), firsts[-1])
    out = ["## Usage", "", "### diffusers", ""]
    if p.kind == GGUF and a.family and reads_gguf(a.family):
        out += _gguf_usage(p, a, base)
    elif p.kind == DIFFUSERS:
        out += [
            "The folders hold compressed-tensors weights; weightsmith loads them as a diffusers module:",
            "",
            "```python",
            "from huggingface_hub import snapshot_download",
            "from weightsmith.load import load_model",
            "",
            f'local = snapshot_download("{p.repo_id}")',
            f'transformer = load_model(f"{{local}}/{p.name_of(a)}")',
            "```",
        ]
    else:
        out += [
            "diffusers does not read this file as it is; turn it back into a Diffusers folder with weightsmith:",
            "",
            "```sh",
            f"weightsmith convert {Path(p.name_of(a)).name} transformer/ --to diffusers --dtype bf16",
            "```",
        ]
    out += ["", "### ComfyUI", ""]
    if p.kind == GGUF:
        out.append(
            "Put the `.gguf` file(s) in `ComfyUI/models/unet` (or `models/diffusion_models`) and load them with "
            "the **Unet Loader (GGUF)** node (`UnetLoaderGGUF`) of ComfyUI-GGUF. Split GGUFs are not read by "
            "ComfyUI-GGUF, so every file here is whole."
        )
    elif p.kind == DIFFUSERS:
        out.append("ComfyUI does not read Diffusers folders; use the single-file or GGUF releases there.")
    else:
        out.append(
            "Put the `.safetensors` file(s) in `ComfyUI/models/diffusion_models` and load them with the "
            "**Load Diffusion Model** node (`UNETLoader`)."
        )
    if any(expert_folder(b) for b in p.artifacts):
        out += [
            "",
            "`HighNoise/` holds the expert that runs the early (high-noise) steps, `LowNoise/` the late ones; "
            "load both, each in its own loader.",
        ]
    return out


def card(p: Plan, base: Base, quantized_by: str, has_plot: bool) -> str:
    """README.md: front matter, warning (if any), files and fidelity, plot, usage."""
    meta = front_matter(p, base, quantized_by)
    table, foot = files_table(p)
    title = f"{p.model} ({p.library or 'single-file'})"
    source = f"[{base.model}](https://huggingface.co/{base.model})" if base.model else "the base model"
    body = [
        *warning_lines(p),
        f"# {title}",
        "",
        f"Quantized from {source} with weightsmith {__version__}. Every number below was measured on this "
        "model: the same generations (same seeds, scheduler and prompt embeddings) run through the diffusers "
        "pipeline with the full-precision base and with each file, compared frame by frame and on the latents.",
        "",
        "## Files",
        "",
        *table,
        "",
        "Values are the worst over all seeds and prompts, and over the loaders measured "
        "(weightsmith's and, for GGUF, diffusers' own). Higher is better for all three.",
        "",
    ]
    if foot:
        body += ["Measured at:", "", *foot, ""]
    if has_plot:
        body += ["## Fidelity against size", "", f"![fidelity against size]({PLOT})", ""]
    body += [
        *usage(p, base),
        "",
        f"`{SUMS}` lists the sha256 of every weight file (`sha256sum -c {SUMS}`).",
        "",
    ]
    head = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{head}---\n\n" + "\n".join(body)
