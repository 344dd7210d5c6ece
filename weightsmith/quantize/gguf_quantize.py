"""`weightsmith quantize SRC DST.gguf --scheme gguf:TYPE`: any supported checkpoint to a GGUF file
that ComfyUI-GGUF and diffusers load as it is.

The source is converted on the fly to its original layout (GGUF consumers expect original names),
each tensor gets its type from the recipe, is quantized with weightsmith's torch kernels (bit-exact
with ggml) on the chosen device, and streamed into the file, whose header was written from the
shapes and types known ahead. Memory holds one tensor at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightsmith import __version__
from weightsmith.convert.engine import make_plan, resolve_detection, stream
from weightsmith.errors import OutputError, QuantizationError, UsageError
from weightsmith.families import get_component
from weightsmith.families.base import DIFFUSION_PREFIX
from weightsmith.io import open_single
from weightsmith.io.atomic import atomic_dir, atomic_file, check_destination, scratch_dir
from weightsmith.io.gguf_writer import GGUFTensorSpec, tensor_bytes, write_gguf
from weightsmith.quantize.gguf_recipes import FAMILY_RULES, RECIPES, assign_types, get_recipe
from weightsmith.quantize.imatrix import ImportanceMatrix, read_imatrix
from weightsmith.quantize.schemes import SchemeFamily, check_keep_globs, register_scheme_family

F16_MAX = 65504.0


@dataclass
class LayerRecord:
    name: str
    shape: tuple[int, ...]
    qtype: str
    reason: str
    bytes_before: int
    bytes_after: int
    sqnr_db: float | None = None
    imatrix: bool = False


@dataclass
class QuantizeResult:
    dst: Path
    scheme: str
    layers: list[LayerRecord] = field(default_factory=list)
    seconds: float = 0.0
    report_path: Path | None = None
    #: what the run changed or left out on its own (e.g. imatrix entries it could not use)
    notes: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        by_type: dict[str, list[LayerRecord]] = {}
        for r in self.layers:
            by_type.setdefault(r.qtype, []).append(r)
        before = sum(r.bytes_before for r in self.layers)
        after = sum(r.bytes_after for r in self.layers)
        lines = [
            f"{self.scheme}: {len(self.layers)} tensors, {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB "
            f"({after / max(before, 1):.1%}) in {self.seconds:.1f} s"
        ]
        lines.append(f"  {'type':8s} {'tensors':>7s} {'MB':>10s} {'min SQNR dB':>12s} {'mean SQNR dB':>13s}")
        for qt, rs in sorted(by_type.items()):
            s = [r.sqnr_db for r in rs if r.sqnr_db is not None]
            mn = f"{min(s, key=_worst_first):12.2f}" if s else f"{'-':>12s}"
            me = f"{sum(s) / len(s):13.2f}" if s else f"{'-':>13s}"
            lines.append(f"  {qt:8s} {len(rs):7d} {sum(r.bytes_after for r in rs) / 1e6:10.2f} {mn} {me}")
        scored = [r for r in self.layers if r.sqnr_db is not None]
        for r in sorted(scored, key=lambda r: _worst_first(r.sqnr_db))[:3]:  # type: ignore[arg-type]
            lines.append(f"  lowest SQNR: {r.name} {r.qtype} {r.sqnr_db:.2f} dB")
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.report_path:
            lines.append(f"  per-layer table: {self.report_path}")
        return lines


def _worst_first(db: float) -> float:
    """Sort key for SQNR: NaN (a tensor that could not be measured) counts as the worst of all."""
    return -math.inf if math.isnan(db) else db


SQNR_CHUNK = 1 << 20


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (inf when identical).

    Summed in float64 over chunks of a million elements, so its temporaries stay a few MB whatever
    the tensor's size (whole-tensor float64 copies were the largest allocation of a GGUF run).
    """
    r, a = ref.reshape(-1), approx.reshape(-1)
    noise = signal = 0.0
    for i in range(0, r.numel(), SQNR_CHUNK):
        rc = r[i : i + SQNR_CHUNK].to(torch.float64)
        signal += float(rc.square().sum())
        noise += float(rc.sub_(a[i : i + SQNR_CHUNK].to(torch.float64)).square_().sum())
    return _ratio_db(signal, noise)


def _ratio_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file through one reused 1 MiB buffer (``read(n)`` would allocate n bytes per
    call, whatever the file's size)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


DEVICE_HINT = "use auto, cpu, cuda, cuda:N or mps"


def pick_device(device: str) -> torch.device:
    """The torch device for ``--device``: only CPU, an existing CUDA device or Apple's MPS; checked
    before any work, so that e.g. ``meta`` (no data) or a missing GPU never gets as far as a kernel."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError, TypeError, OverflowError):
        raise UsageError(f"unknown device {device!r}", hint=DEVICE_HINT) from None
    if d.type == "cpu":
        return torch.device("cpu")
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device} asked for, but no CUDA device is available", hint="use --device cpu"
            )
        n = torch.cuda.device_count()
        if d.index is not None and d.index >= n:
            raise UsageError(
                f"--device {device}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}",
                hint="use --device cuda or a device index that exists",
            )
        return d
    if d.type == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError(
                f"--device {device} asked for, but MPS is not available", hint="use --device cpu"
            )
        return d
    raise UsageError(f"--device {device}: the quantization kernels do not run on {d.type}", hint=DEVICE_HINT)


def layers_path(dst: Path) -> Path:
    """Where the per-layer table of ``dst`` goes."""
    return dst.with_name(dst.name + ".layers.json")


def check_outputs(dst: Path, overwrite: bool, report: bool, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written or that exists without
    --overwrite: DST and, when the run writes it, DST.layers.json (an earlier run's table)."""
    check_destination(dst, overwrite, "dir" if folder else "file")
    if report:
        table = layers_path(dst)
        if os.path.lexists(table) and not overwrite:
            raise OutputError(
                f"{table} already exists (the per-layer table of an earlier run)",
                hint="choose another destination or pass --overwrite",
            )
        check_destination(table, overwrite, "file")


@contextlib.contextmanager
def staged_outputs(
    dst: Path, overwrite: bool, report: bool, folder: bool = False
) -> Iterator[tuple[Path, Path | None]]:
    """(path to write DST at, path to write its per-layer table at or None), put in place together
    on success (DST first, then the table) and all removed on failure: never a new DST beside an
    earlier run's table, nor a DST without its table.

    DST is written inside a scratch folder named as a partial of DST (swept by a later run if
    this one is killed), so the writer's own partials never sit beside DST under other names."""
    check_outputs(dst, overwrite, report, folder)
    with scratch_dir(dst) as scratch, contextlib.ExitStack() as stack:
        table = stack.enter_context(atomic_file(layers_path(dst), overwrite)) if report else None
        main = stack.enter_context((atomic_dir if folder else atomic_file)(dst, overwrite))
        out = scratch / dst.name
        yield out, table
        os.replace(out, main)


def encode(
    t: torch.Tensor, qtype: str, device: torch.device, imatrix: torch.Tensor | None, name: str
) -> tuple[np.ndarray, float | None]:
    """(stored array, SQNR in dB or None for float types) for one tensor."""
    from weightsmith.quantize.ggml import quantize

    if qtype == "F32":
        return t.to(torch.float32).contiguous().numpy(), None
    if qtype == "F16":
        if t.is_floating_point() and t.numel() and float(t.abs().max()) > F16_MAX:
            raise QuantizationError(
                f"tensor {name!r} holds values beyond F16's range (up to {float(t.abs().max()):.3g}; "
                f"F16 holds {F16_MAX:g})",
                hint="use --scheme gguf:BF16 or gguf:F32, which keep every tensor in a wider float, "
                "or fix the checkpoint's outliers",
            )
        return t.to(torch.float16).contiguous().numpy(), None
    if qtype == "BF16":
        return tensor_bytes(t.to(torch.bfloat16), "BF16"), None
    x = t.to(device=device, dtype=torch.float32)
    if x.numel() and not math.isfinite(float(x.sum())) and not bool(torch.isfinite(x).all()):
        raise QuantizationError(
            f"tensor {name!r} holds NaN or infinite values; it cannot be quantized to {qtype}",
            hint=f"fix the checkpoint, or keep it in float with --keep '{name}'",
        )
    q = quantize(x, qtype, imatrix)
    return q.cpu().numpy(), _blockwise_sqnr(x, q, qtype, name)


def _blockwise_sqnr(x: torch.Tensor, q: torch.Tensor, qtype: str, name: str = "tensor") -> float:
    """SQNR of ``q`` against ``x``, dequantizing a few million elements at a time (no full float copy).

    Sums of squares are float32 dot products (BLAS): 10x faster than float64 sums and within ~1e-5
    relative, i.e. 0.0001 dB, of them; this is a report, not a bit-exact quantity. A chunk whose
    float32 sums overflow is summed again in float64, and one whose decoded values are not finite
    (ggml's float16 block scales overflow on weights beyond ~1e5..1e9, depending on the type) is
    refused: no NaN or infinite block is ever written.
    """
    from weightsmith.quantize.ggml import dequantize

    xr = x.reshape(-1, x.shape[-1]) if x.dim() else x.reshape(1, 1)
    qr = q.reshape(xr.shape[0], -1)
    step = max(1, (4 * SQNR_CHUNK) // max(1, xr.shape[1]))
    noise = signal = 0.0
    for r0 in range(0, xr.shape[0], step):
        ref = xr[r0 : r0 + step]
        deq = dequantize(qr[r0 : r0 + step], qtype, tuple(ref.shape))
        diff = deq.sub_(ref).reshape(-1)
        flat = ref.reshape(-1)
        s, n = float(torch.dot(flat, flat)), float(torch.dot(diff, diff))
        if not (math.isfinite(s) and math.isfinite(n)):  # rare: look again, in float64
            deq = dequantize(qr[r0 : r0 + step], qtype, tuple(ref.shape)).reshape(-1)
            if not bool(torch.isfinite(deq).all()):
                big = float(ref.abs().max())
                raise QuantizationError(
                    f"tensor {name!r} does not fit {qtype}: its values reach {big:.3g}, and {qtype}'s "
                    "float16 block scales overflow, giving infinite or NaN blocks",
                    hint="values beyond float16 need --scheme gguf:BF16 or gguf:F32 (every tensor "
                    "kept in a wider float); or fix the checkpoint's outliers",
                )
            f64 = flat.to(torch.float64)
            d64 = deq.to(torch.float64).sub_(f64)
            s, n = float(torch.dot(f64, f64)), float(torch.dot(d64, d64))
        signal += s
        noise += n
    return _ratio_db(signal, noise)


def quantize_gguf(
    src: str | Path,
    dst: str | Path,
    scheme: str,
    *,
    imatrix: str | Path | None = None,
    keep: tuple[str, ...] = (),
    family: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    config: str | Path | None = None,
    report: bool = True,
) -> QuantizeResult:
    """Quantize a transformer checkpoint into a GGUF file with a named recipe."""
    from weightsmith.quantize.ggml import get_kernel

    t0 = time.perf_counter()
    recipe = get_recipe(scheme.split(":", 1)[1] if ":" in scheme else scheme)
    dst = Path(dst)
    if dst.suffix != ".gguf":
        raise UsageError(
            f"GGUF output {dst} should end in .gguf", hint="name the destination like model-Q4_K_M.gguf"
        )
    dev = pick_device(device)
    check_outputs(dst, overwrite, report)
    im: ImportanceMatrix | None = read_imatrix(imatrix) if imatrix else None
    ck = open_single(src)
    try:
        if config is not None:
            from weightsmith.convert.run import load_config

            ck.config = load_config(config)
        det = resolve_detection(ck, family)
        if det.component != "transformer":
            raise UsageError(
                f"{src} is a {det.family} {det.component}; GGUF recipes are for transformers",
                hint="point at the transformer (a pipeline folder's transformer is picked automatically)",
            )
        comp = get_component(det.family, det.component)
        target = "original" if "original" in comp.layouts else "sat"
        plan = make_plan(ck, target, detection=det, prefix="")
        names = {s.name: s.name.removeprefix(DIFFUSION_PREFIX) for s in plan.specs}
        check_keep_globs(keep, names.values())
        rp = assign_types(recipe, det.family, [(names[s.name], s.shape) for s in plan.specs], keep)
        types = rp.types()
        reasons = {a.name: a.reason for a in rp.assignments}
        specs = [GGUFTensorSpec(names[s.name], s.shape, types[names[s.name]]) for s in plan.specs]
        if im is not None:
            _check_imatrix(im, specs)
        meta = _metadata(recipe.name, det, ck, plan.source_config, im)
        layers: list[LayerRecord] = []

        def arrays():
            for (out_name, t), spec in zip(stream(plan, progress), specs):
                name = names[out_name]
                w = im.get(name) if im is not None else None
                arr, sqnr = encode(t, spec.qtype, dev, w, name)
                layers.append(
                    LayerRecord(
                        name,
                        spec.shape,
                        spec.qtype,
                        reasons[name],
                        t.numel() * t.element_size(),
                        arr.nbytes,
                        sqnr,
                        w is not None and get_kernel(spec.qtype).uses_imatrix,
                    )
                )
                yield name, arr

        with staged_outputs(dst, overwrite, report) as (tmp, table):
            write_gguf(tmp, FAMILY_RULES[det.family].arch, specs, arrays(), meta)
            result = QuantizeResult(dst, f"gguf:{recipe.name}", layers, time.perf_counter() - t0)
            if im is not None:
                result.notes.extend(im.notes)
            if table is not None:
                write_layer_report(dst, result, table)
    finally:
        ck.close()
    if report:
        result.report_path = layers_path(dst)
    return result


def _check_imatrix(im: ImportanceMatrix, specs: list[GGUFTensorSpec]) -> None:
    """Before any work: the imatrix belongs to this model (names it), and each entry a quantized
    tensor will use has one value per input column."""
    from weightsmith.quantize.ggml import get_kernel

    if not any(im.names(s.name) for s in specs):
        some = ", ".join(sorted([*im.values, *im.dropped])[:3])
        raise UsageError(
            f"none of the imatrix's entries ({some}...) names a tensor of this model",
            hint="use the imatrix made for this model (entries are named like blocks.0.ffn.0.weight)",
        )
    for s in specs:
        w = im.get(s.name)
        if w is None or s.qtype in ("F32", "F16", "BF16") or not get_kernel(s.qtype).uses_imatrix:
            continue
        if w.numel() != s.shape[-1]:
            raise UsageError(
                f"imatrix entry {s.name!r} has {w.numel()} values, but the tensor's rows have "
                f"{s.shape[-1]} columns",
                hint="use the imatrix made for this model",
            )


def _metadata(
    recipe: str, det: Any, ck: Any, config: dict | None, im: ImportanceMatrix | None
) -> dict[str, Any]:
    import gguf

    files = [p for p in ck.files if p.is_file()]
    meta: dict[str, Any] = {
        "general.name": ck.path.name,
        "general.file_type": int(gguf.LlamaFileType[RECIPES[recipe].file_type]),
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "general.quantized_by": "weightsmith",
        "weightsmith.version": __version__,
        "weightsmith.scheme": f"gguf:{recipe}",
        "weightsmith.family": det.family,
        "weightsmith.component": det.component,
        "weightsmith.variant": det.variant or "unknown",
        "weightsmith.source.layout": det.layout,
        "weightsmith.source.files": [p.name for p in files],
        "weightsmith.source.sha256": [file_sha256(p) for p in files],
    }
    if config:
        meta["weightsmith.diffusers_config"] = json.dumps(
            {k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True
        )
    if im is not None and im.path is not None:
        meta["weightsmith.imatrix.file"] = im.path.name
        meta["weightsmith.imatrix.sha256"] = file_sha256(im.path)
    return meta


def write_layer_report(dst: Path, result: QuantizeResult, path: Path | None = None) -> Path:
    """The per-layer table (scheme, SQNR, bytes before and after) as JSON beside the output.

    ``path``: where to write it (a staged temporary from ``staged_outputs``); by default
    DST.layers.json itself, replaced atomically."""
    rows = [
        {
            "name": r.name,
            "shape": list(r.shape),
            "type": r.qtype,
            "reason": r.reason,
            "bytes_before": r.bytes_before,
            "bytes_after": r.bytes_after,
            "sqnr_db": None if r.sqnr_db is None or not math.isfinite(r.sqnr_db) else round(r.sqnr_db, 3),
            "imatrix": r.imatrix,
        }
        for r in result.layers
    ]
    body = {
        "schema": "weightsmith.quantize-layers/1",
        "file": dst.name,
        "scheme": result.scheme,
        "layers": rows,
    }
    if result.notes:
        body["notes"] = list(result.notes)
    text = json.dumps(body, indent=1, allow_nan=False) + "\n"
    if path is not None:
        path.write_text(text)
        return layers_path(dst)
    target = layers_path(dst)
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_text(text)
    return target


register_scheme_family(
    SchemeFamily(
        "gguf",
        lambda s: s.lower().startswith("gguf:"),
        quantize_gguf,
        lambda: [f"gguf:{n}" for n in RECIPES],
    )
)
