"""The exported folder: one subfolder per component and a small JSON describing each.

    DST/
      weightsmith_onnx.json     what was exported: family, variant, opset, dtype, per part the
                                graph, inputs/outputs (names, dims, dtypes), free dimensions and
                                the validation errors measured
      model_index.json          the diffusers pipeline the parts belong to (class names)
      transformer/model.onnx    (+ model.onnx.data when weights are external) + config.json
      vae_decoder/model.onnx    + config.json
      vae_encoder/model.onnx    + config.json

Subfolder names follow optimum-onnx's pipeline folders (``transformer``, ``vae_decoder``,
``vae_encoder``), each with the component's diffusers ``config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from weightsmith.errors import InputError, NotFoundError
from weightsmith.io.structured import read_json_file

MANIFEST = "weightsmith_onnx.json"
GRAPH = "model.onnx"
FORMAT = "weightsmith-onnx/1"


def subfolder(part: str) -> str:
    """``vae-decoder`` -> ``vae_decoder`` (optimum's names)."""
    return part.replace("-", "_")


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of an exported folder (NotFoundError / InputError when it is not one)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise NotFoundError(
            f"{folder} is not an exported ONNX folder (no {MANIFEST})",
            hint="give a folder written by `weightsmith export onnx`",
        )
    data = read_json_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("parts"), dict):
        raise InputError(f"{path} is not a {FORMAT} manifest", hint="export the model again")
    return data


def graph_path(folder: str | Path, part: str) -> Path:
    """The graph of ``part`` in an exported folder (NotFoundError if it was not exported)."""
    data = read_manifest(folder)
    entry = data["parts"].get(part)
    if not isinstance(entry, dict):
        raise NotFoundError(
            f"{folder} holds no {part} graph",
            hint=f"it holds: {', '.join(data['parts']) or 'nothing'}; export it with --component {part}",
        )
    path = Path(folder) / subfolder(part) / GRAPH
    if not path.is_file():
        raise NotFoundError(f"{path} is missing", hint="the exported folder is incomplete; export it again")
    return path
