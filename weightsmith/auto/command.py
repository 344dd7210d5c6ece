"""The quantize command's option checks for ``auto:`` schemes (the search itself is
``weightsmith.api.quantize``, which the command calls for every scheme)."""

from __future__ import annotations

from typing import Any

from weightsmith.errors import UsageError

# The generation options' values when a user gives none (what quantize without auto: expects).
_GEN_DEFAULTS: dict[str, Any] = {
    "vae": None,
    "prompts": None,
    "negative_prompt": "",
    "seeds": "0",
    "steps": None,
    "height": None,
    "width": None,
    "frames": None,
    "guidance": None,
    "scheduler": "default",
    "image": None,
    "offload": "none",
    "vae_tiling": False,
    "dtype": "fp32",
    "text_len": None,
}


def is_auto(scheme: str) -> bool:
    return scheme.lower().startswith("auto:")


def reject_auto_options(scheme: str, auto_kw: dict[str, Any], gen_kw: dict[str, Any]) -> None:
    """A plain scheme with --target, --max-size, --report, --json or generation options is a
    usage error (they mean something only to auto: schemes)."""
    given = [k for k, v in auto_kw.items() if v not in (None, False, ())]
    given += [k for k, v in gen_kw.items() if _GEN_DEFAULTS.get(k, v) != v]
    if given:
        shown = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
        raise UsageError(
            f"{shown} apply to --scheme auto:FORMAT only, not {scheme!r}",
            hint="drop them, or use e.g. --scheme auto:gguf --target 'psnr>=32'",
        )


def reject_plain_options(scheme: str, other: dict[str, Any]) -> None:
    """Options of the plain schemes (--format, --imatrix ...) given with an auto: scheme."""
    bad = [k for k, v in other.items() if v not in (None, False, ())]
    if bad:
        shown = ", ".join("--" + k.replace("_", "-") for k in sorted(bad))
        raise UsageError(
            f"{shown} do not apply to {scheme}", hint="auto: schemes choose the types themselves"
        )
