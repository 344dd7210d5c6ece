"""What BASELINE and CANDIDATE arguments name, and how their modules are loaded.

An argument is a path (a pipeline folder, a Diffusers component folder, or any checkpoint file
weightsmith reads) or, for two-expert models, ``transformer=PATH,transformer_2=PATH``. Candidates
load through ``weightsmith.load.load_model``; a GGUF candidate of a family diffusers can load from
GGUF (the family's ``quant.diffusers_reads_gguf``) is also loaded through diffusers' own ``from_single_file`` with
``GGUFQuantizationConfig``, the way users will run it, and verified as a second entry. A folder
written by ``weightsmith export onnx`` is a candidate too: ONNX Runtime runs its transformer
graph inside the same pipeline and scheduler loop (``weightsmith.onnx.module``).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightsmith.errors import DetectionError, InputError, NotFoundError, UsageError
from weightsmith.families import Detection
from weightsmith.io import PipelineCheckpoint, open_checkpoint, open_single
from weightsmith.io.quantized import DequantizingView
from weightsmith.verify.family import generation, reads_gguf

ONNX_MANIFEST = "weightsmith_onnx.json"  # weightsmith.onnx.layout.MANIFEST (that layer is above io)

# The component names a BASELINE/CANDIDATE spec may give (a family says which of them it runs).
EXPERTS = ("transformer", "transformer_2")


@dataclass
class Source:
    """One transformer checkpoint: where it is, what it is, its config, bytes and files."""

    path: Path
    component: str | None
    detection: Detection
    config: dict[str, Any] | None
    files: list[Path]
    bytes: int
    container: str

    @property
    def is_gguf(self) -> bool:
        return self.container == "gguf"


@dataclass
class Baseline:
    """The reference: transformer(s), optional VAE and what a pipeline folder says about scheduling."""

    label: str
    experts: dict[str, Source]
    vae: Source | None
    folder: Path | None = None
    scheduler_config: dict[str, Any] | None = None
    boundary_ratio: float | None = None
    expand_timesteps: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.experts["transformer"].detection.family

    @property
    def variant(self) -> str:
        return self.experts["transformer"].detection.variant or ""

    def config(self, expert: str = "transformer") -> dict[str, Any]:
        src = self.experts.get(expert) or self.experts["transformer"]
        return dict(src.config or {})


@dataclass
class Candidate:
    """One thing to verify: transformer file(s), or a text encoder that runs with the baseline's
    transformer(s) (``text_encoder``, ``experts`` then empty), and which loader reads them."""

    label: str
    experts: dict[str, Source]
    loader: str = "weightsmith"  # or "diffusers-gguf"
    text_encoder: Source | None = None

    @property
    def bytes(self) -> int:
        te = self.text_encoder.bytes if self.text_encoder is not None else 0
        return sum(s.bytes for s in self.experts.values()) + te


def parse_spec(spec: str, need_first: bool = True) -> dict[str, Path] | Path:
    """``PATH`` or ``transformer=PATH,transformer_2=PATH`` (a candidate may name one expert)."""
    if "=" not in spec:
        return Path(spec)
    out: dict[str, Path] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in EXPERTS or not value.strip():
            raise UsageError(
                f"cannot read {spec!r}", hint="write PATH or transformer=PATH,transformer_2=PATH"
            )
        out[name] = Path(value.strip())
    if need_first and "transformer" not in out:
        raise UsageError(f"{spec!r} names no transformer=PATH", hint="the first expert is always needed")
    return out


def describe_source(path: Path, component: str | None = "transformer") -> Source:
    """Open a checkpoint just enough to know what it is and what its config is (no weights read)."""
    from weightsmith.convert.config import output_config
    from weightsmith.convert.engine import make_plan, resolve_detection

    if not path.exists():
        raise NotFoundError(f"{path} does not exist", hint="check the path")
    # Quantized artifacts (compressed-tensors, ComfyUI comfy_quant or scaled fp8) open as the plain checkpoint they
    # encode, dequantized on read.
    ck = open_single(path, component)
    files = [p for p in ck.files if p.is_file()]
    try:
        det = resolve_detection(ck)
        config = None
        try:
            plan = make_plan(ck, "diffusers", detection=det)
            config = {k: v for k, v in output_config(plan).items()}
            if ck.config:
                config = {**config, **{k: v for k, v in ck.config.items() if not k.startswith("_")}}
        except Exception:  # noqa: BLE001 - shapes alone may not settle the config; the loader says why
            config = dict(ck.config) if ck.config else None
        kind = "quantized" if isinstance(ck, DequantizingView) else _kind(ck)
        return Source(path, component, det, config, files, sum(p.stat().st_size for p in files), kind)
    finally:
        ck.close()


def _kind(ck: Any) -> str:
    c = str(ck.container)
    return "gguf" if "gguf" in c else c


def _open_pipeline(folder: Path) -> PipelineCheckpoint:
    """A folder with model_index.json, opened as the pipeline it declares."""
    ck = open_checkpoint(folder)
    if not isinstance(ck, PipelineCheckpoint):
        ck.close()
        raise InputError(
            f"{folder} has a model_index.json but is not read as a pipeline folder",
            hint="check the folder's model_index.json and component folders",
        )
    return ck


def resolve_baseline(spec: str, vae: str | None = None) -> Baseline:
    """BASELINE: a pipeline folder, a transformer alone, or ``transformer=..,transformer_2=..``."""
    parsed = parse_spec(spec)
    folder: Path | None = None
    sched: dict[str, Any] | None = None
    boundary = None
    expand = False
    notes: list[str] = []
    if isinstance(parsed, Path) and (parsed / "model_index.json").is_file():
        folder = parsed
        ck = _open_pipeline(folder)
        index = ck.model_index
        names = list(ck.components)
        ck.close()
        if "transformer" not in names:
            raise NotFoundError(f"pipeline {folder} has no transformer weights", hint="check the folder")
        first = describe_source(folder, "transformer")
        wanted = _expert_components(first)
        experts = {
            e: first if e == "transformer" else describe_source(folder, e) for e in wanted if e in names
        }
        vae_src = describe_source(folder, "vae") if vae is None and "vae" in names else None
        boundary = index.get("boundary_ratio")
        expand = bool(index.get("expand_timesteps", False))
        sched_file = folder / "scheduler" / "scheduler_config.json"
        if sched_file.is_file():
            from weightsmith.io.structured import read_json_file

            sched = read_json_file(
                sched_file, hint="fix or re-export the pipeline's scheduler folder", allow_nonfinite=True
            )
            if not isinstance(sched, dict):
                raise InputError(
                    f"{sched_file} is not a JSON object", hint="fix or re-export the scheduler folder"
                )
    else:
        paths = parsed if isinstance(parsed, dict) else {"transformer": parsed}
        experts = {e: describe_source(p, "transformer") for e, p in paths.items()}
        vae_src = None
    if vae is not None:
        vae_src = describe_source(Path(vae), "vae")
    for e, s in experts.items():
        if s.detection.component != "transformer":
            raise DetectionError(
                f"baseline {e} {s.path} is a {s.detection.family} {s.detection.component}, not a transformer",
                hint="pass the transformer (or the pipeline folder) as BASELINE and the VAE with --vae",
            )
    if vae_src is not None and vae_src.detection.family != experts["transformer"].detection.family:
        raise UsageError(
            f"--vae {vae_src.path} is a {vae_src.detection.family} VAE but the baseline is "
            f"{experts['transformer'].detection.family}",
            hint="pass the VAE that belongs to the baseline model",
        )
    det = experts["transformer"].detection
    gen = generation(det.family)
    handover = gen.expert_boundary(det.variant)
    if handover is not None:
        if "transformer_2" not in experts:
            notes.append(gen.lone_expert_note(det.variant))
        elif boundary is None:
            boundary = handover
    if gen.expands_timesteps(det.variant):
        expand = True
    if vae_src is None:
        notes.append("no VAE: frames are not decoded; latents are scored (latent_* metrics)")
    label = str(folder or experts["transformer"].path)
    return Baseline(label, experts, vae_src, folder, sched, boundary, expand, notes)


def resolve_candidates(specs: list[str], baseline: Baseline, consumers: str = "both") -> list[Candidate]:
    """CANDIDATE arguments as Candidates; a GGUF that diffusers reads also as its diffusers-loader twin."""
    out: list[Candidate] = []
    for spec in specs:
        parsed = parse_spec(spec, need_first=False)
        if isinstance(parsed, Path) and (parsed / ONNX_MANIFEST).is_file():
            src = describe_onnx(parsed)
            _check_matches(src, baseline, "transformer")
            out.append(Candidate(parsed.name, {"transformer": src}, "onnx"))
            continue
        if isinstance(parsed, Path) and (parsed / "model_index.json").is_file():
            names = _open_pipeline(parsed)
            comps = list(names.components)
            names.close()
            experts = {e: describe_source(parsed, e) for e in EXPERTS if e in comps and e in baseline.experts}
        else:
            paths = parsed if isinstance(parsed, dict) else {"transformer": parsed}
            experts = {e: describe_source(p, "transformer") for e, p in paths.items()}
            te = experts.get("transformer")
            if isinstance(parsed, Path) and te is not None and te.detection.component == "text_encoder":
                _check_text_encoder(te, baseline)
                out.append(Candidate(parsed.name, {}, "weightsmith", te))
                continue
        extra = [e for e in experts if e not in baseline.experts]
        if extra:
            raise UsageError(
                f"candidate {spec!r} names {extra[0]}, which the baseline does not have",
                hint="give the baseline both experts (a pipeline folder or transformer=..,transformer_2=..)",
            )
        for e, s in experts.items():
            _check_matches(s, baseline, e)
        label = spec if isinstance(parsed, dict) else parsed.name
        if consumers in ("both", "weightsmith"):
            out.append(Candidate(label, experts, "weightsmith"))
        if (
            consumers in ("both", "diffusers")
            and all(s.is_gguf for s in experts.values())
            and reads_gguf(baseline.family)
        ):
            out.append(Candidate(f"{label} [diffusers GGUF]", experts, "diffusers-gguf"))
    return out


def _check_text_encoder(src: Source, baseline: Baseline) -> None:
    """A text-encoder candidate runs through the baseline pipeline folder's tokenizer and code."""
    d = src.detection
    if d.family != baseline.family:
        raise UsageError(
            f"candidate {src.path} is a {d.family} text_encoder but the baseline is {baseline.family}",
            hint="verify a text encoder against the pipeline it belongs to",
        )
    folder = baseline.folder
    if folder is None or not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
        raise UsageError(
            f"candidate {src.path} is a text encoder, which is scored against the baseline pipeline's own "
            "text_encoder/ and tokenizer/",
            hint="pass a pipeline folder with text_encoder/ and tokenizer/ as BASELINE",
        )


def describe_onnx(folder: Path) -> Source:
    """An exported ONNX folder's transformer as a Source (family and variant from its manifest)."""
    from weightsmith.io.structured import read_json_file
    from weightsmith.onnx.layout import graph_path, read_manifest, subfolder

    entry = read_manifest(folder)["parts"].get("transformer")
    graph = graph_path(folder, "transformer")
    det = Detection(entry["family"], "transformer", "diffusers", entry["variant"])
    config = read_json_file(folder / subfolder("transformer") / "config.json")
    files = [p for p in (graph, Path(str(graph) + ".data")) if p.is_file()]
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return Source(folder, "transformer", det, config, files, sum(p.stat().st_size for p in files), "onnx")


def _expert_components(first: Source) -> tuple[str, ...]:
    """The pipeline components the baseline's family runs as experts (the transformer first)."""
    if first.detection.component != "transformer":
        return ("transformer",)
    return generation(first.detection.family).expert_components


def _check_matches(src: Source, baseline: Baseline, expert: str) -> None:
    ref = baseline.experts.get(expert) or baseline.experts["transformer"]
    d, r = src.detection, ref.detection
    if d.component != "transformer":
        raise DetectionError(
            f"candidate {src.path} is a {d.family} {d.component}, not a transformer",
            hint="pass the transformer (or the pipeline folder) as the candidate",
        )
    if d.family != r.family or (d.variant and r.variant and d.variant != r.variant):
        raise UsageError(
            f"candidate {src.path} is a {d.family} {d.variant} transformer but the baseline is {r.family} {r.variant}",
            hint="verify a candidate against the model it was made from",
        )


def load_transformer(
    src: Source,
    loader: str,
    baseline_config: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """The candidate's (or baseline's) transformer module, through the chosen loader."""
    from weightsmith.load import load_model

    if loader == "diffusers-gguf":
        return _load_diffusers_gguf(src, baseline_config, device, dtype)
    if loader == "onnx":
        from weightsmith.onnx.module import OnnxTransformer

        return OnnxTransformer(src.path, str(device)).to(device).eval()
    config = None if src.config and _has_own_config(src) else baseline_config
    model = load_model(src.path, component=src.component, device="cpu", dtype=None, config=config)
    return _cast(model, dtype).to(device).eval()


def _has_own_config(src: Source) -> bool:
    ck = open_single(src.path, src.component)
    try:
        return bool(ck.config)
    finally:
        ck.close()


def _cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Floating-point parameters and buffers to ``dtype``; quantized storage (uint8) stays as it is."""
    for mod in model.modules():
        if hasattr(mod, "compute_dtype"):
            mod.compute_dtype = dtype
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.is_floating_point() and p.dtype != dtype:
                setattr(mod, name, nn.Parameter(p.detach().to(dtype), requires_grad=False))
        for name, b in list(mod.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point() and b.dtype != dtype and not _keep_fp32(mod, name):
                mod._buffers[name] = b.to(dtype)
    return model


def _keep_fp32(mod: nn.Module, name: str) -> bool:
    # RoPE tables are computed in float32/float64 by diffusers and meant to stay so.
    return "freq" in name or "rope" in type(mod).__name__.lower()


def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers' dtype argument: ``dtype`` since 0.42, ``torch_dtype`` before (now deprecated)."""
    import re

    import diffusers

    m = re.match(r"(\d+)\.(\d+)", diffusers.__version__)
    new = m is not None and (int(m.group(1)), int(m.group(2))) >= (0, 42)
    return {"dtype" if new else "torch_dtype": dtype}


def _load_diffusers_gguf(
    src: Source, config: dict[str, Any], device: torch.device, dtype: torch.dtype
) -> nn.Module:
    from diffusers import GGUFQuantizationConfig

    from weightsmith.families import get_component

    cls = get_component(src.detection.family, "transformer").model_class(src.detection.variant)
    with tempfile.TemporaryDirectory(prefix="weightsmith-config-") as tmp:
        cfg = {k: v for k, v in config.items() if not k.startswith("_")}
        cfg["_class_name"] = cls.__name__
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        model = cls.from_single_file(
            str(src.path),
            quantization_config=GGUFQuantizationConfig(compute_dtype=dtype),
            config=tmp,
            local_files_only=True,
            **dtype_kwarg(dtype),
        )
    return model.to(device).eval()


def load_vae(src: Source, device: torch.device) -> nn.Module:
    """The VAE in float32 (decoding is part of the measurement, not of what is verified)."""
    from weightsmith.load import load_model

    return load_model(src.path, component=src.component, device=device, dtype=torch.float32).eval()


def file_digest(paths: list[Path], memo: dict[str, str] | None = None) -> str:
    """sha256 over the files' contents (memoised by path, size and mtime: hashing 28 GB takes minutes)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if memo is not None and key in memo:
            d = memo[key]
        else:
            from weightsmith.quantize.hashing import file_sha256

            d = file_sha256(p)  # also remembered across runs by file stamp
            if memo is not None:
                memo[key] = d
        h.update(p.name.encode() + b"\0" + d.encode())
    return h.hexdigest()


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
