"""Parsing JSON and TOML from files nobody vouches for.

``json.loads`` raises RecursionError on deeply nested input, ValueError on integers of more
than 4300 digits, and accepts the non-JSON literals NaN and Infinity; TOML has its own
nesting and number traps. Every reader of a user's JSON or TOML (safetensors headers, index
files, config.json, model_index.json, SAT model configs, LoRA metadata, gates files) goes
through these two functions, so each of those cases is one clear error, never exit 3.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from weightsmith.errors import CorruptFileError, WeightsmithError

# Deeper than any real config or header; deep enough that no legitimate file is refused.
MAX_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def _first_nonfinite(value: Any) -> tuple[str, float] | None:
    """Where the first NaN or infinity sits (a dotted key path) and what it is, or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return path or "the value", v
        if isinstance(v, dict):
            stack.extend((f"{path}.{k}" if path else str(k), x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


def parse_json(
    data: str | bytes,
    what: str,
    *,
    error: type[WeightsmithError] = CorruptFileError,
    hint: str | None = "fix or re-create the file",
    allow_nonfinite: bool = False,
) -> Any:
    """JSON from untrusted text: bounded nesting, no NaN/Infinity, no gigantic integers.

    ``what`` names the source in the message ("path/config.json", "the safetensors header").
    ``allow_nonfinite`` accepts Python's NaN/Infinity literals, for files that diffusers itself
    writes with them (scheduler configs hold ``-Infinity``).
    """
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not valid JSON (not UTF-8 text)", hint=hint) from None
    try:
        value = json.loads(data) if allow_nonfinite else json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a real file", hint=hint) from None
    except json.JSONDecodeError as e:
        raise error(
            f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", hint=hint
        ) from None
    except ValueError as e:  # integers over Python's digit limit, NaN/Infinity literals
        msg = str(e).split(";")[0][:120]
        raise error(f"{what} is not valid JSON ({msg})", hint=hint) from None
    if not _depth_ok(value):
        raise error(f"{what} is nested more than {MAX_DEPTH} levels deep; no real file is", hint=hint)
    bad = None if allow_nonfinite else _first_nonfinite(value)  # 1e999 parses to inf, no literal
    if bad is not None:
        raise error(f"{what}: {bad[0][:80]} is {bad[1]}, not a finite number", hint=hint)
    return value


def read_json_file(
    path: str | Path,
    *,
    what: str | None = None,
    error: type[WeightsmithError] = CorruptFileError,
    hint: str | None = "fix or re-create the file",
    max_bytes: int = 64 * 2**20,
    allow_nonfinite: bool = False,
) -> Any:
    """A JSON file (a regular file of at most ``max_bytes``) parsed by ``parse_json``."""
    p = Path(path)
    label = what or str(p)
    if not p.is_file():
        raise error(f"{label} is not a regular file", hint=hint)
    if p.stat().st_size > max_bytes:
        raise error(
            f"{label} is {p.stat().st_size} bytes, larger than any real JSON file of its kind", hint=hint
        )
    return parse_json(p.read_bytes(), label, error=error, hint=hint, allow_nonfinite=allow_nonfinite)


def parse_toml(
    data: str | bytes,
    what: str,
    *,
    error: type[WeightsmithError] = CorruptFileError,
    hint: str | None = "fix the file",
) -> dict[str, Any]:
    """TOML from untrusted text, with the same guarantees as ``parse_json`` (NaN/inf refused)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not valid TOML (not UTF-8 text)", hint=hint) from None
    try:
        value = tomllib.loads(data)
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a real file", hint=hint) from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} is not valid TOML ({str(e)[:160]})", hint=hint) from None
    except ValueError as e:
        raise error(f"{what} is not valid TOML ({str(e).split(';')[0][:120]})", hint=hint) from None
    if not _depth_ok(value):
        raise error(f"{what} is nested more than {MAX_DEPTH} levels deep; no real file is", hint=hint)
    bad = _first_nonfinite(value)
    if bad is not None:
        raise error(f"{what}: {bad[0][:80]} is {bad[1]}, not a finite number", hint=hint)
    return value
