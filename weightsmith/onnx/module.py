"""An exported transformer graph as a drop-in for the diffusers module a pipeline calls.

``verify`` runs candidates in the family's own diffusers pipeline and scheduler loop; for an
exported folder the pipeline's transformer is this module: each call binds the pipeline's
arguments to the diffusers class's ``forward`` signature, lets the family's export adapter turn
them into the graph's named inputs (``ExportAdapter.feed``: CogVideoX's rotary tables, for
instance), runs ONNX Runtime and returns what the diffusers module would (``(sample,)``).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weightsmith.families import get_component
from weightsmith.families.export import TRANSFORMER
from weightsmith.io.structured import read_json_file
from weightsmith.onnx.layout import graph_path, read_manifest, subfolder
from weightsmith.onnx.runtime import session

NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


class OnnxTransformer(nn.Module):
    """The transformer of an exported folder, called like the diffusers class (see module doc)."""

    def __init__(self, folder: str | Path, device: str = "cpu") -> None:
        super().__init__()
        from diffusers.configuration_utils import FrozenDict

        read_manifest(folder)
        self.graph = graph_path(folder, TRANSFORMER)  # NotFoundError when no transformer was exported
        self.entry = read_manifest(folder)["parts"][TRANSFORMER]
        cfg = read_json_file(Path(folder) / subfolder(TRANSFORMER) / "config.json")
        self.config = FrozenDict({k: v for k, v in cfg.items() if not k.startswith("_")})
        self.component = get_component(self.entry["family"], TRANSFORMER)
        self.variant = self.entry["variant"]
        self.signature = inspect.signature(self.component.model_class(self.variant).forward)
        self.inputs = self.entry["interface"]["inputs"]
        self.session = session(self.graph, device)
        # The pipeline reads the module's device and dtype from its parameters.
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    @contextlib.contextmanager
    def cache_context(self, name: str) -> Iterator[None]:
        """Diffusers' cache hooks have nothing to cache here."""
        yield

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind_partial(self, *args, **kwargs)
        named = {k: v for k, v in bound.arguments.items() if k != "self"}
        named.update(named.pop("kwargs", {}) or {})
        feeds = self.component.export.feed(named, dict(self.config))
        out_like = named["hidden_states"]
        run = {}
        for spec in self.inputs:
            value = feeds[spec["name"]]
            t = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
            if t.ndim == 0 and len(spec["dims"]) == 1:
                t = t.expand(out_like.shape[0])
            run[spec["name"]] = t.detach().float().cpu().numpy().astype(NP.get(spec["dtype"], np.float32))
        (sample,) = self.session.run(None, run)
        result = torch.from_numpy(np.asarray(sample, dtype=np.float32)).to(out_like.device, out_like.dtype)
        if named.get("return_dict", True):
            from diffusers.models.modeling_outputs import Transformer2DModelOutput

            return Transformer2DModelOutput(sample=result)
        return (result,)
