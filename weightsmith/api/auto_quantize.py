"""``quantize(scheme="auto:FORMAT", target=...)``: the fidelity-budgeted search as an API call.

``weightsmith.api.files.quantize`` hands ``auto:`` schemes here; the command line's
``quantize --scheme auto:...`` calls the same function, so ``AutoQuantizeResult.to_json()`` is
what ``--json`` prints (schema ``weightsmith.auto/1``). A search where no mix passes is a result
with ``passed`` False, not an exception (``raise_for_gates()`` raises what the command exits 1
with), as ``verify`` does.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightsmith.api.scoring import GenerationOptions, settings_of
from weightsmith.progress import ProgressCallback, reporting

PathArg = str | os.PathLike[str]


@dataclass(frozen=True)
class AutoQuantizeResult:
    """``quantize`` with an ``auto:`` scheme: the chosen type per layer, the verified tries and
    the size-vs-fidelity frontier. ``passed``: a mix passed every target (then ``dst`` holds it,
    ``dst``.verify/ its verify report); ``report_path``: auto.html when ``report=`` was given
    (not part of the JSON document)."""

    dst: Path
    scheme: str
    passed: bool
    bytes: int | None
    types: Mapping[str, str]
    targets: tuple[str, ...]
    tries: int
    seconds: float
    report_path: Path | None = None
    document: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: the run's internal record, for the command line's summary (not public)
    _internal: Any = field(default=None, repr=False, compare=False)

    def raise_for_gates(self) -> None:
        """Raise ``GateFailed`` when no mix passed (nothing when one did)."""
        from weightsmith.errors import GateFailed

        if not self.passed:
            raise GateFailed(
                f"no mix of {self.scheme} passed {' '.join(self.targets)} in {self.tries} tries",
                hint="loosen the target, or allow a larger maximum size (max_size, --max-size) or more tries",
            )

    def to_json(self) -> dict[str, Any]:
        """The ``weightsmith.auto/1`` document (as ``quantize --scheme auto:... --json`` prints it)."""
        return copy.deepcopy(dict(self.document))


def reject_plain_options(scheme: str, given: Mapping[str, Any]) -> None:
    """``quantize`` options that only ``auto:`` schemes take, given to a plain scheme."""
    from weightsmith.errors import UsageError

    bad = sorted(k for k, v in given.items() if v not in (None, False, (), [], {}, ""))
    if bad:
        raise UsageError(
            f"{', '.join(bad)} apply to auto: schemes only, not {scheme!r}",
            hint="drop them, or use e.g. scheme='auto:gguf', target='psnr>=32'",
        )


def quantize_auto(
    src: PathArg,
    dst: PathArg,
    scheme: str,
    *,
    target: str | Sequence[str],
    max_size: str | int | None,
    max_tries: int,
    report: PathArg | None,
    vae: PathArg | None,
    generation: GenerationOptions | None,
    cache_dir: PathArg | None,
    keep: Sequence[str],
    device: str,
    overwrite: bool,
    other: Mapping[str, Any],
    progress: ProgressCallback | None,
) -> AutoQuantizeResult:
    """Run the ``auto:`` search (see ``weightsmith.auto.search``); ``other``: the options of plain
    schemes, which must be unset."""
    from weightsmith.auto.report import to_json, write_auto_report
    from weightsmith.auto.search import AutoOptions, run_auto
    from weightsmith.errors import UsageError
    from weightsmith.io.writers import parse_size
    from weightsmith.verify.cache import default_cache_dir
    from weightsmith.verify.gates import parse_gate
    from weightsmith.verify.report import check_report_dir

    bad = sorted(k for k, v in other.items() if v not in (None, False, (), []))
    if bad:
        raise UsageError(
            f"{', '.join(bad)} do not apply to {scheme}", hint="auto: schemes choose the types themselves"
        )
    targets = [target] if isinstance(target, str) else list(target)
    gates = [parse_gate(g) for g in targets]
    size = parse_size(max_size) if isinstance(max_size, str) else max_size
    if report is not None:
        check_report_dir(os.fspath(report))
    options: GenerationOptions = {**(generation or {})}
    if "device" in options:
        raise UsageError("generation options take no device here", hint="pass quantize(device=...)")
    settings = settings_of({**options, "device": device})
    with reporting(progress):
        result = run_auto(
            AutoOptions(
                os.fspath(src),
                os.fspath(dst),
                scheme,
                gates,
                size,
                settings,
                vae=None if vae is None else os.fspath(vae),
                keep=tuple(keep),
                device=device,
                overwrite=overwrite,
                cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
                max_tries=max_tries,
            )
        )
    written = write_auto_report(os.fspath(report), result) if report is not None else None
    final = result.final
    return AutoQuantizeResult(
        Path(result.dst),
        scheme,
        final is not None,
        final.bytes if final else None,
        dict(result.choice),
        tuple(result.targets),
        len(result.attempts),
        result.timing.get("total_seconds", 0.0),
        written,
        to_json(result),
        result,
    )
