"""The verbs that run reference generations: ``verify``, ``sensitivity``, ``imatrix``.

They share the generation options of the command line (``GenerationOptions``: ``seeds``,
``steps``, ``height`` ... as keywords); everything a caller passes is checked before any model
is opened, so a bad ``height`` or ``device`` fails at once, not after minutes of loading.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from weightsmith.api.results import ImatrixResult
from weightsmith.api.scores import SensitivityResult, VerifyResult
from weightsmith.progress import ProgressCallback, reporting

if TYPE_CHECKING:
    from weightsmith.verify.settings import GenerationSettings

PathArg = str | os.PathLike[str]


class GenerationOptions(TypedDict, total=False):
    """How each reference generation runs (``None``: the family's default), as on the command line.

    ``seeds``: ``"0"``, ``"0,1,2"``, ``"0-3"`` or a sequence of ints; ``prompts``: prompt
    embeddings (.safetensors) or a .txt of prompts; ``scheduler``: default | euler | unipc |
    dpm++ | ddim | lightning | a diffusers class name; ``dtype``: fp32 | bf16 | fp16;
    ``offload``: none | model | sequential."""

    seeds: str | Sequence[int]
    steps: int | None
    height: int | None
    width: int | None
    frames: int | None
    guidance: float | None
    scheduler: str
    image: PathArg | None
    prompts: PathArg | None
    negative_prompt: str
    offload: str
    vae_tiling: bool
    dtype: str
    device: str
    text_len: int | None


_FIELDS = frozenset(GenerationOptions.__annotations__)


def settings_of(options: GenerationOptions) -> GenerationSettings:
    """GenerationSettings from the options, checked (``weightsmith.errors.UsageError`` if not)."""
    from weightsmith.errors import UsageError
    from weightsmith.verify.settings import GenerationSettings, check_options, parse_seeds

    unknown = sorted(set(options) - _FIELDS)
    if unknown:
        raise UsageError(
            f"unknown generation option(s): {', '.join(unknown)}", hint=f"use {', '.join(sorted(_FIELDS))}"
        )
    seeds = options.get("seeds", "0")
    text = seeds if isinstance(seeds, str) else ",".join(str(int(s)) for s in seeds)
    kw: dict[str, Any] = {k: v for k, v in options.items() if k != "seeds"}
    for k in ("image", "prompts"):
        if kw.get(k) is not None:
            kw[k] = os.fspath(kw[k])
    settings = GenerationSettings(seeds=parse_seeds(text), **kw)
    check_options(settings)
    return settings


def _main_rank() -> bool:
    """torchrun's rank 0 (or no torchrun): the process that writes reports."""
    return int(os.environ.get("RANK", "0")) == 0


def _report_dir(report: PathArg | None) -> Path | None:
    from weightsmith.verify.report import check_report_dir

    if report is None:
        return None
    check_report_dir(os.fspath(report))
    return Path(report)


def verify(
    baseline: PathArg,
    candidates: Sequence[PathArg],
    *,
    gate: Sequence[str] = (),
    gates: PathArg | None = None,
    report: PathArg | None = None,
    cache_dir: PathArg | None = None,
    no_cache: bool = False,
    consumer: str = "both",
    vae: PathArg | None = None,
    progress: ProgressCallback | None = None,
    **generation: Unpack[GenerationOptions],
) -> VerifyResult:
    """Run the same generations with ``baseline`` and each candidate and score the difference.

    ``gate``: gates such as ``'psnr>=30'``; ``gates``: a TOML file of them; ``report``: a folder
    for report.json/.md/.html; ``consumer``: both | weightsmith | diffusers (which loader reads a
    GGUF that diffusers also reads). A failed gate does not raise: see ``VerifyResult.passed`` and
    ``VerifyResult.raise_for_gates()``."""
    from weightsmith.verify.cache import default_cache_dir
    from weightsmith.verify.gates import load_gates_toml, parse_gate
    from weightsmith.verify.run import VerifyOptions
    from weightsmith.verify.run import verify as run_verify

    parsed = [parse_gate(g) for g in gate] + (load_gates_toml(os.fspath(gates)) if gates else [])
    folder = _report_dir(report)
    settings = settings_of(generation)
    cache = None if no_cache else (Path(cache_dir) if cache_dir else default_cache_dir())
    opts = VerifyOptions(
        os.fspath(baseline),
        [os.fspath(c) for c in candidates],
        settings,
        vae=None if vae is None else os.fspath(vae),
        gates=parsed,
        cache_dir=cache,
        consumers=consumer,
    )
    with reporting(progress):
        result = run_verify(opts)
    written = None
    if folder is not None and _main_rank():
        from weightsmith.verify.report import write_report

        written = write_report(folder, [result])
    return VerifyResult.of(result.to_json(), written, result)


def sensitivity(
    model: PathArg,
    *,
    scheme: str,
    report: PathArg | None = None,
    vae: PathArg | None = None,
    progress: ProgressCallback | None = None,
    **generation: Unpack[GenerationOptions],
) -> SensitivityResult:
    """Rank ``model``'s Linear layers by how much quantizing each one alone with ``scheme``
    changes the transformer's output; ``report``: a folder for sensitivity.json/.md/.html."""
    from weightsmith.verify.sensitivity import run_sensitivity, write_sensitivity_report

    folder = _report_dir(report)
    settings = settings_of(generation)
    with reporting(progress):
        result = run_sensitivity(
            os.fspath(model), scheme, settings, vae=None if vae is None else os.fspath(vae)
        )
    written = write_sensitivity_report(folder, result) if folder is not None and _main_rank() else None
    return SensitivityResult.of(result.to_json(), written, result)


def imatrix(
    model: PathArg,
    out: PathArg,
    *,
    overwrite: bool = False,
    vae: PathArg | None = None,
    progress: ProgressCallback | None = None,
    **generation: Unpack[GenerationOptions],
) -> ImatrixResult:
    """Collect an importance matrix (llama.cpp's GGUF imatrix format) for ``model`` from reference
    generations into ``out``, for ``quantize(imatrix=out)``."""
    from weightsmith.verify.importance import collect_imatrix

    settings = settings_of(generation)
    with reporting(progress):
        r = collect_imatrix(
            os.fspath(model),
            os.fspath(out),
            settings,
            vae=None if vae is None else os.fspath(vae),
            overwrite=overwrite,
        )
    return ImatrixResult(Path(r.path), r.tensors, r.rows, r.items, r.seconds, tuple(r.notes))
