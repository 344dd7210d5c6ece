"""`weightsmith quantize SRC DST.gguf --scheme gguf:TYPE`: any supported checkpoint to a GGUF file
that ComfyUI-GGUF and diffusers load as it is.

The source is converted on the fly to the family's GGUF layout (GGUF consumers expect original
names), each tensor gets its type from the recipe, is quantized with weightsmith's kernels (bit-exact with
ggml; they measure the SQNR as they go) on the chosen device, and streamed into the file, whose
header was written from the shapes and types known ahead. Reading, quantizing and writing run as a
bounded pipeline (pipeline.py): a few tensors in flight, the sources hashed alongside.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightsmith._version import __version__
from weightsmith.convert.config import load_config
from weightsmith.convert.engine import Plan, make_plan, resolve_detection, stream
from weightsmith.errors import UsageError
from weightsmith.families import Detection, get_component
from weightsmith.families.base import DIFFUSION_PREFIX
from weightsmith.io import Checkpoint, open_single
from weightsmith.io.gguf_writer import GGUFTensorSpec, write_gguf
from weightsmith.quantize.gguf import arrays as array_path
from weightsmith.quantize.gguf.recipes import RECIPES, RecipePlan, assign_types, get_recipe
from weightsmith.quantize.hashing import file_sha256
from weightsmith.quantize.keep import check_keep_globs
from weightsmith.quantize.options import QuantizeOptions, SchemeFamily
from weightsmith.quantize.outputs import check_outputs, staged_outputs
from weightsmith.quantize.pipeline import Background, Phases, ahead
from weightsmith.quantize.report import LayerRecord, QuantizeResult, layers_path, write_layer_report

if TYPE_CHECKING:
    import numpy as np

    from weightsmith.quantize.gguf.imatrix import ImportanceMatrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorPath:
    """How a run's tensors are read, prepared (float32, checked) and encoded: as torch tensors on
    a device (``encode.py``), or as numpy arrays without torch (``arrays.py``); the pipeline, the
    plan and the writer are the same."""

    name: str
    read: Callable[[Plan, bool], Iterator[tuple[str, Any]]]
    prepare: Callable[[Any, str, str], Any]  # (tensor, ggml type, name)
    encode: Callable[[Any, str, Any, str], tuple[np.ndarray, float | None]]  # (..., imatrix, name)


NUMPY_PATH = TensorPath(  # looked up on each call (tests wrap the stages)
    "numpy",
    lambda plan, progress: array_path.read(plan, progress),
    lambda t, qtype, name: array_path.prepare(t, qtype, name),
    lambda x, qtype, w, name: array_path.encode(x, qtype, w, name),
)


def torch_path(device: str) -> TensorPath:
    """The torch tensors' path on ``--device`` (any device, an imatrix, every plan op)."""
    from weightsmith.quantize.device import pick_device
    from weightsmith.quantize.gguf.encode import encode, prepare

    dev = pick_device(device)
    return TensorPath(
        "torch",
        lambda plan, progress: stream(plan, progress),
        lambda t, qtype, name: prepare(t, qtype, dev, name),
        lambda x, qtype, w, name: encode(x, qtype, dev, w, name, True),
    )


def recipe_plan(ck: Checkpoint, det: Detection, recipe: str, keep: tuple[str, ...] = ()) -> RecipePlan:
    """The type of every tensor of ``ck`` in its GGUF file (what ``quantize_gguf`` writes)."""
    comp = get_component(det.family, det.component)
    plan = make_plan(ck, comp.quant.gguf_layout, detection=det, prefix="", dtype_names=True)
    names = [(s.name.removeprefix(DIFFUSION_PREFIX), s.shape) for s in plan.specs]
    return assign_types(get_recipe(recipe), comp, names, keep, plan.source_config)


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
    overrides: Mapping[str, str] | None = None,
    label: str | None = None,
) -> QuantizeResult:
    """Quantize a transformer checkpoint into a GGUF file with a named recipe (``overrides``: GGUF
    name -> type for single tensors; ``label``: the scheme recorded in the file, e.g. ``auto:gguf``)."""
    opts = QuantizeOptions(imatrix, tuple(keep), family, device, overwrite, progress, config, report)
    return run_gguf(src, dst, scheme, opts, overrides, label)


def run_gguf(
    src: str | Path,
    dst: str | Path,
    scheme: str,
    opts: QuantizeOptions,
    overrides: Mapping[str, str] | None = None,
    label: str | None = None,
) -> QuantizeResult:
    """``quantize_gguf`` with its options as typed values."""
    t0 = time.perf_counter()
    recipe = get_recipe(scheme.split(":", 1)[1] if ":" in scheme else scheme)
    dst = Path(dst)
    if dst.suffix != ".gguf":
        raise UsageError(
            f"GGUF output {dst} should end in .gguf", hint="name the destination like model-Q4_K_M.gguf"
        )
    if opts.device not in ("auto", "cpu"):
        torch_path(opts.device)  # a device that does not exist is refused before any work
    check_outputs(dst, opts.overwrite, opts.report)
    im: ImportanceMatrix | None = None
    if opts.imatrix:
        from weightsmith.quantize.gguf.imatrix import read_imatrix

        im = read_imatrix(opts.imatrix)
    ck = open_single(src)
    stop = threading.Event()  # set when the run ends: a failed run leaves no hashing behind
    try:
        if opts.config is not None:
            ck.config = load_config(opts.config)
        det = resolve_detection(ck, opts.family)
        comp = get_component(det.family, det.component)
        spec = comp.quant
        if spec.gguf_arch is None:
            raise UsageError(
                f"{src} is a {det.family} {det.component}, for which no GGUF architecture is known "
                "(GGUF recipes cover transformers and T5/UMT5 text encoders)",
                hint="point at the transformer (a pipeline folder's transformer is picked automatically), "
                "or declare quant.gguf_arch on the family's Component",
            )
        plan = make_plan(ck, spec.gguf_layout, detection=det, prefix="", dtype_names=True)
        names = {s.name: s.name.removeprefix(DIFFUSION_PREFIX) for s in plan.specs}
        check_keep_globs(opts.keep, names.values())
        rp = assign_types(
            recipe,
            comp,
            [(names[s.name], s.shape) for s in plan.specs],
            opts.keep,
            plan.source_config,
            overrides,
        )
        types = rp.types()
        reasons = {a.name: a.reason for a in rp.assignments}
        specs = [GGUFTensorSpec(names[s.name], s.shape, types[names[s.name]]) for s in plan.specs]
        if im is not None:
            _check_imatrix(im, specs)
        why = array_path.refusal(opts.device, im, ck, plan, [(s.shape, s.qtype) for s in specs])
        if why:
            log.debug("GGUF quantize runs on torch tensors: %s", why)
        path = NUMPY_PATH if why is None else torch_path(opts.device)
        # The sources' SHA-256 go into the header, which is written first: the header gets
        # placeholders of the same length, the hashing runs beside the quantization, and the
        # real digests are patched in before the file is renamed into place (same bytes).
        files = [p for p in ck.files if p.is_file()]
        holders = [secrets.token_hex(32) for _ in files]
        phases = Phases()
        hashing = Background(
            lambda: phases.call("hash", lambda: [file_sha256(p, stop=stop) for p in files]), "hash"
        )
        scheme_label = label or f"gguf:{recipe.name}"
        meta = _metadata(recipe.name, det, ck, plan.source_config, im, files, holders, scheme_label)

        def full_config() -> dict[str, Any]:
            return comp.folder_config(det.variant, comp.diffusers_config(det, ck.infos), plan.source_config)

        meta.update(comp.gguf_metadata(det, full_config, ck.path, meta["general.file_type"]))
        layers: list[LayerRecord] = []

        def read():  # stage 1: read, convert the layout, float32 on the device, refuse NaN/inf
            for (out_name, t), tspec in zip(path.read(plan, opts.progress), specs):
                name = names[out_name]
                yield name, tspec, path.prepare(t, tspec.qtype, name), t.nbytes

        def arrays():  # stage 2: quantize (the kernels measure their SQNR as they go)
            with closing(ahead(phases.timed("read", read()), 1, "read")) as tensors:
                for name, tspec, x, before in tensors:
                    w = im.get(name) if im is not None else None
                    arr, sqnr = phases.call("quantize", path.encode, x, tspec.qtype, w, name)
                    used = w is not None and _uses_imatrix(tspec.qtype)
                    rec = LayerRecord(
                        name, tspec.shape, tspec.qtype, reasons[name], before, arr.nbytes, sqnr, used
                    )
                    layers.append(rec)
                    del x
                    yield name, arr

        def digests() -> dict[str, str]:
            return dict(zip(holders, phases.call("hash wait", hashing.result)))

        with staged_outputs(dst, opts.overwrite, opts.report) as (tmp, table):
            t_write = time.perf_counter()
            waited = Phases()  # stage 3 (this thread): write each array as it comes
            with closing(ahead(arrays(), 1, "quantize")) as quantized:
                stream_in = waited.timed("wait", quantized)
                write_gguf(tmp, spec.gguf_arch, specs, stream_in, meta, patch=digests)
            phases.add("write", time.perf_counter() - t_write - waited.seconds.get("wait", 0.0))
            result = QuantizeResult(dst, scheme_label, layers, time.perf_counter() - t0)
            result.phases = dict(phases.seconds)
            if im is not None:
                result.notes.extend(im.notes)
            if table is not None:
                write_layer_report(dst, result, table)
    finally:
        stop.set()
        ck.close()
    if opts.report:
        result.report_path = layers_path(dst)
    return result


def _uses_imatrix(qtype: str) -> bool:
    from weightsmith.kernels.ggml import get_kernel

    return get_kernel(qtype).uses_imatrix


def _check_imatrix(im: ImportanceMatrix, specs: list[GGUFTensorSpec]) -> None:
    """Before any work: the imatrix belongs to this model (names it), and each entry a quantized
    tensor will use has one value per input column."""
    if not any(im.names(s.name) for s in specs):
        some = ", ".join(sorted([*im.values, *im.dropped])[:3])
        raise UsageError(
            f"none of the imatrix's entries ({some}...) names a tensor of this model",
            hint="use the imatrix made for this model (entries are named like blocks.0.ffn.0.weight)",
        )
    for s in specs:
        w = im.get(s.name)
        if w is None or s.qtype in ("F32", "F16", "BF16") or not _uses_imatrix(s.qtype):
            continue
        if w.numel() != s.shape[-1]:
            raise UsageError(
                f"imatrix entry {s.name!r} has {w.numel()} values, but the tensor's rows have "
                f"{s.shape[-1]} columns",
                hint="use the imatrix made for this model",
            )


def _metadata(
    recipe: str,
    det: Detection,
    ck: Checkpoint,
    config: dict | None,
    im: ImportanceMatrix | None,
    files: list[Path],
    sha256: list[str],
    scheme: str | None = None,
) -> dict[str, Any]:
    """The header's key/values; ``sha256``: the source files' digests (or same-length placeholders);
    ``scheme``: the label recorded (default ``gguf:RECIPE``; a mixed ``auto:`` file names itself)."""
    import gguf

    meta: dict[str, Any] = {
        "general.name": ck.path.name,
        "general.file_type": int(gguf.LlamaFileType[RECIPES[recipe].file_type]),
        "general.quantization_version": gguf.GGML_QUANT_VERSION,
        "general.quantized_by": "weightsmith",
        "weightsmith.version": __version__,
        "weightsmith.scheme": scheme or f"gguf:{recipe}",
        "weightsmith.family": det.family,
        "weightsmith.component": det.component,
        "weightsmith.variant": det.variant or "unknown",
        "weightsmith.source.layout": det.layout,
        "weightsmith.source.files": [p.name for p in files],
        "weightsmith.source.sha256": list(sha256),
    }
    if config:
        meta["weightsmith.diffusers_config"] = json.dumps(
            {k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True
        )
    if im is not None and im.path is not None:
        meta["weightsmith.imatrix.file"] = im.path.name
        meta["weightsmith.imatrix.sha256"] = file_sha256(im.path)
    return meta


SCHEME_FAMILY = SchemeFamily(
    "gguf",
    lambda s: s.lower().startswith("gguf:"),
    quantize_gguf,
    lambda: [f"gguf:{n}" for n in RECIPES],
)
