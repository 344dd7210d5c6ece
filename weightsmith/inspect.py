"""What `weightsmith inspect` reports about a checkpoint, as a plain dict (the --json schema)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from weightsmith.families import detect, get_component
from weightsmith.io import Checkpoint, PipelineCheckpoint, open_checkpoint

SCHEMA = "weightsmith.inspect/1"


def _jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except (TypeError, ValueError):
        return str(v)


def describe_checkpoint(ck: Checkpoint) -> dict[str, Any]:
    """Facts about one component checkpoint: container, detection, counts, dtypes, metadata."""
    dtypes: dict[str, dict[str, int]] = defaultdict(lambda: {"tensors": 0, "parameters": 0, "bytes": 0})
    params = 0
    for info in ck.infos.values():
        d = dtypes[info.storage]
        d["tensors"] += 1
        d["parameters"] += info.numel
        d["bytes"] += info.nbytes
        params += info.numel
    det = detect(ck.infos, ck.config)
    quantized = {k: v for k, v in dtypes.items() if not _plain(k)}
    return {
        "container": ck.container,
        "files": [str(p) for p in ck.files],
        "bytes_on_disk": ck.bytes_on_disk,
        "tensors": len(ck.infos),
        "parameters": params,
        "dtypes": dict(sorted(dtypes.items())),
        "quantized": dict(sorted(quantized.items())),
        "detection": det.as_dict() if det else None,
        "config": ck.config,
        "metadata": {k: _jsonable(v) for k, v in sorted(ck.metadata.items())},
    }


def _plain(storage: str) -> bool:
    from weightsmith.io.base import PLAIN_DTYPES

    return storage in PLAIN_DTYPES


def describe(path: str | Path) -> dict[str, Any]:
    """The full inspect report for a file or folder (a pipeline lists its components)."""
    ck = open_checkpoint(path)
    try:
        if isinstance(ck, PipelineCheckpoint):
            comps = {name: describe_checkpoint(c) for name, c in ck.components.items()}
            return {
                "schema": SCHEMA,
                "path": str(Path(path)),
                "container": ck.container,
                "pipeline_class": ck.model_index.get("_class_name"),
                "bytes_on_disk": sum(c["bytes_on_disk"] for c in comps.values()),
                "parameters": sum(c["parameters"] for c in comps.values()),
                "detection": pipeline_detection(comps),
                "components": comps,
            }
        out = {"schema": SCHEMA, "path": str(Path(path)), **describe_checkpoint(ck)}
        return out
    finally:
        ck.close()


def pipeline_detection(comps: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The pipeline's family and variant, from its transformer(s).

    A second transformer (``transformer_2``) makes a two-expert pipeline where the family has
    them (its component's ``expert_pairs``): the variant is the pipeline's, not one expert's.
    """
    main = comps.get("transformer", {}).get("detection")
    if not main:
        return None
    det = dict(main)
    second = comps.get("transformer_2", {}).get("detection")
    pairs = get_component(det["family"], det["component"]).expert_pairs if second else None
    if pairs is not None:
        det["variant"] = pairs.get(det["variant"] or "")
        det["notes"] = [
            *det.get("notes", []),
            "two experts: transformer (high noise), transformer_2 (low noise)",
        ]
    return det


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit} ({n:,})"
    return f"{n:,}"


def _detection_line(det: dict[str, Any] | None) -> list[str]:
    if det is None:
        return ["family:    unknown (keys match no known family; nothing is guessed)"]
    variant = det["variant"] or "unknown"
    size = det.get("facts", {}).get("size")
    lines = [
        f"family:    {det['family']} {det['component']}",
        f"layout:    {det['layout']}" + (f" (key prefix {det['prefix']!r})" if det.get("prefix") else ""),
        f"variant:   {variant}" + (f" ({size})" if size else ""),
    ]
    lines += [f"note:      {n}" for n in det.get("notes", [])]
    return lines


def format_component(d: dict[str, Any], indent: str = "") -> list[str]:
    lines = [
        f"container: {d['container']} ({len(d['files'])} file(s), {human_size(d['bytes_on_disk'])} on disk)",
        *_detection_line(d["detection"]),
        f"tensors:   {d['tensors']:,}",
        f"params:    {human_count(d['parameters'])}",
        "dtypes:    "
        + ", ".join(
            f"{k} {v['tensors']} tensors / {human_count(v['parameters']).split(' ')[0]} params"
            for k, v in d["dtypes"].items()
        ),
    ]
    if d["quantized"]:
        lines.append(
            "quantized: " + ", ".join(f"{k} ({v['tensors']} tensors)" for k, v in d["quantized"].items())
        )
    if d["metadata"]:
        lines.append("metadata:")
        for k, v in d["metadata"].items():
            s = json.dumps(v) if not isinstance(v, str) else v
            lines.append(f"  {k}: {s if len(s) <= 100 else s[:97] + '...'}")
    return [indent + line for line in lines]


def format_report(r: dict[str, Any]) -> str:
    lines = [f"path:      {r['path']}"]
    if "components" in r:
        lines.append(f"container: {r['container']} ({r.get('pipeline_class')})")
        lines += _detection_line(r["detection"])
        lines.append(f"params:    {human_count(r['parameters'])} in {len(r['components'])} components")
        for name, c in r["components"].items():
            lines.append(f"[{name}]")
            lines += format_component(c, "  ")
    else:
        lines += format_component(r)
    return "\n".join(lines)


from weightsmith._facade import verb_module  # noqa: E402 - `weightsmith.inspect(...)` is the verb

verb_module(__name__)
