"""ONNX-side variants of an exported fp32 graph: fp16, and INT8 with ONNX Runtime's quantizer.

* ``fp16``: ``onnxruntime.transformers.float16`` converts weights and activations, keeping in
  fp32 the ops whose intermediate values leave fp16's range or lose too much in it: the
  normalizations (their mean of squares), ``Pow``/``ReduceMean``/``Sqrt``, ``Softmax`` and the
  exponentials of the timestep and rotary embeddings (``Exp``, ``Sin``, ``Cos``), plus the
  converter's own block list. Inputs and outputs stay float32 (``keep_io_types``).
* ``int8-dynamic``: ``quantize_dynamic``: int8 weights per channel of ``MatMul``/``Gemm``,
  activations quantized per call (``MatMulInteger``).
* ``int8-static``: ``quantize_static`` in QDQ format: int8 weights per channel, activation
  ranges calibrated (MinMax) on inputs: the caller's (the verifier's reference generations feed
  the transformer's real inputs) or else the plan's example inputs at its two shapes.

Both INT8 kinds quantize ``MatMul``/``Gemm`` only (the convolutions of VAEs and patch embeddings
stay float). The graph is rewritten in place, weights external when they were.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightsmith.errors import UsageError
from weightsmith.families.export import ExportPlan
from weightsmith.families.inputs import example_inputs

QUANTIZE = ("int8-dynamic", "int8-static")
FP32_OPS = (
    "LayerNormalization",
    "SimplifiedLayerNormalization",
    "RMSNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Pow",
    "ReduceMean",
    "Sqrt",
    "Softmax",
    "Exp",
    "Sin",
    "Cos",
)
LINEAR_OPS = ["MatMul", "Gemm"]


def _external(path: Path) -> bool:
    return Path(str(path) + ".data").exists()


def _save(model: Any, path: Path, external: bool) -> None:
    import onnx

    data = Path(str(path) + ".data")
    if data.exists():
        data.unlink()
    onnx.save_model(
        model, str(path), save_as_external_data=external, location=data.name if external else None
    )


def to_fp16(path: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(path))
    external = _external(path)
    out = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
        disable_shape_infer=external,
    )
    unique_node_names(out.graph)
    _save(out, path, external)


def unique_node_names(graph: Any) -> None:
    """The converter inserts one Cast per (tensor, fp32 consumer) and names both the node and its
    output after the tensor, so a tensor feeding two kept-fp32 ops gets two identical Casts, which
    ONNX Runtime rejects as a duplicate definition. The repeats compute the same value: drop them."""
    produced: dict[str, Any] = {}
    keep = []
    for node in graph.node:
        first = next((produced[o] for o in node.output if o in produced), None)
        if first is not None and (first.op_type, list(first.input), first.attribute) == (
            node.op_type,
            list(node.input),
            node.attribute,
        ):
            continue
        for o in node.output:
            produced[o] = node
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self.feeds: Iterator[Mapping[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> Mapping[str, np.ndarray] | None:
        return next(self.feeds, None)


def calibration_feeds(
    plan: ExportPlan, given: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, np.ndarray]]:
    """The caller's inputs (e.g. ``calibrate.reference_inputs``) as numpy feeds in each input's
    dtype, else the plan's example inputs at its two shapes."""
    if not given:
        given = [
            example_inputs(plan.inputs, sizes, seed=10 + i)
            for i, sizes in enumerate((plan.sizes, plan.second))
        ]
    feeds = []
    for x in given:
        missing = [s.name for s in plan.inputs if s.name not in x]
        if missing:
            raise UsageError(
                f"calibration inputs lack {', '.join(missing)}",
                hint="give every graph input: " + ", ".join(s.name for s in plan.inputs),
            )
        feeds.append({s.name: torch.as_tensor(x[s.name]).to(s.dtype).cpu().numpy() for s in plan.inputs})
    return feeds


def to_int8(path: Path, mode: str, plan: ExportPlan, calibration: Sequence[Mapping[str, Any]] | None) -> None:
    import logging

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    external = _external(path)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "q.onnx"
        # The exporter's value_info annotations can disagree with ONNX's shape inference (a
        # traced size left on a free dimension); the quantizer re-infers shapes, so drop them.
        model = onnx.load(str(path))
        del model.graph.value_info[:]
        _save(model, pre, external)
        del model
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs advice on the root logger
        try:
            if mode == "int8-dynamic":
                quantize_dynamic(
                    pre,
                    out,
                    op_types_to_quantize=LINEAR_OPS,
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    use_external_data_format=external,
                )
            else:
                quantize_static(
                    pre,
                    out,
                    _Reader(calibration_feeds(plan, calibration)),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=LINEAR_OPS,
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    use_external_data_format=external,
                    extra_options={"ActivationSymmetric": True},
                )
        finally:
            root.setLevel(level)
        quantized = onnx.load(str(out))
        # The quantizer's own shape inference names free dimensions anew and can give two sizes
        # one name (ONNX Runtime then refuses to reuse buffers at the second shape): drop it.
        del quantized.graph.value_info[:]
        _save(quantized, path, external)


def make_variant(
    path: Path,
    kind: str,
    quantize: str | None,
    plan: ExportPlan,
    calibration: Sequence[Mapping[str, Any]] | None,
) -> None:
    """Rewrite the fp32 graph at ``path`` as ``kind`` (``fp16``, or ``int8`` by ``quantize``)."""
    if kind == "fp16":
        to_fp16(path)
    elif quantize in QUANTIZE:
        to_int8(path, quantize, plan, calibration)
    else:
        raise UsageError(
            f"unknown variant {kind!r}/{quantize!r}", hint="use --dtype fp16 or --quantize int8-*"
        )
