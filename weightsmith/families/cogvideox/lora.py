"""How CogVideoX LoRA files name the transformer's modules: SwissArmyTransformer's partitioned LoRAs.

SAT's LoraMixin keeps one low-rank pair per partition of a fused module
(``transformer.layers.N.attention.query_key_value.matrix_A.{0,1,2}`` / ``matrix_B.*``). The links
between SAT modules and Diffusers modules are not a second table: they are read off the family's
own SAT -> Diffusers plan, run on the tiny model converted to SAT names by the family's reverse
plan. Each ``.weight`` op of that plan is one ``Link``: a Rename, or a one-input Regroup that
cuts the SAT rows into Diffusers modules (qkv -> to_q/to_k/to_v, adaLN -> norm1/norm2). The same
op applied to a LoRA's ``up`` rows maps a LoRA on the fused SAT module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from weightsmith.errors import ConversionError
from weightsmith.families.base import DIFFUSION_PREFIX, PlanOptions
from weightsmith.families.cogvideox._common import DIFFUSERS, SAT
from weightsmith.families.lora import (
    WEIGHT,
    ComponentLora,
    DiffusersLinkMap,
    Link,
    LinkMap,
    LinkNames,
    LoraTarget,
    block_regex,
    layers_in,
    templated,
)
from weightsmith.families.ops import Spec
from weightsmith.io.base import TensorInfo

_SAT_BLOCK = re.compile(r"(?:transformer\.layers|mixins\.adaln_layer\.\w+)\.([0-9]+)(?=\.|$)")
_SAT_KEY = re.compile(r"(?P<module>.+)\.matrix_(?P<ab>[AB])\.(?P<part>[0-9]+)")
_ROLE = {"A": "down", "B": "up"}


class CogVideoXLora(ComponentLora):
    """LoRA names of the CogVideoX transformer: Diffusers names and SAT partitions."""

    title = "CogVideoX"
    largest_released = 42  # CogVideoX 5B (layouts.md)
    # SAT transformer.layers.N / adaLN_modulations.N / query_layernorm_list.N, Diffusers transformer_blocks.N
    block_words = ("layers", "blocks", "adaLN_modulations", "layernorm_list")
    diffusers_blocks = r"transformer_blocks"
    names_variant = "1.5-5b-i2v"  # every Linear a CogVideoX DiT can have (ofs embedding too)
    partition_format = "cogvideox-sat"
    partition_label = "SAT"
    partition_prefix = DIFFUSION_PREFIX  # SAT keys sit under model.diffusion_model.
    partition_roles = ("matrix_A", "matrix_B")
    format_help = (
        (
            "cogvideox-sat",
            (
                "SwissArmyTransformer: ...attention.query_key_value.matrix_A.0/1/2, matrix_B.*,",
                "attention.dense.matrix_A.0 (any layer count; also inside a LoRA-trained SAT",
                "checkpoint folder)",
            ),
        ),
    )
    targets = (
        LoraTarget(
            name="sat",
            naming="partitioned",
            label="SAT",
            summary="CogVideoX SAT",
            choice_help="CogVideoX",
            dst_help=(
                "a SAT folder (latest + 1/mp_rank_00_model_states.pt), a .pt file or a",
                ".safetensors file (CogVideoX only)",
            ),
            example_dst="cog_lora_sat/",
            prefix=DIFFUSION_PREFIX,
            torch_files=True,
        ),
    )

    def __init__(self) -> None:
        self._links: tuple[dict[str, Link], dict[str, tuple[Link, int]]] | None = None

    # ------------------------------------------------------------ Diffusers names
    def unknown_diffusers(self, modules: Iterable[str]) -> list[str]:
        mods = sorted(set(modules))
        known = self.links(max(self.layers_needed(mods), 1)).by_diffusers
        return [m for m in mods if m not in known]

    # ------------------------------------------------------------ SAT partitions
    def split_partition_key(self, key: str) -> tuple[str, str, str] | None:
        m = _SAT_KEY.fullmatch(key.removeprefix(self.partition_prefix))
        return None if m is None else (m["module"], _ROLE[m["ab"]], m["part"])

    def partition_key(self, native: str, role: str, part: int) -> str:
        ab = self.partition_roles[0] if role == "down" else self.partition_roles[1]
        return f"{self.partition_prefix}{native}.{ab}.{part}"

    def native_layers_needed(self, names: Iterable[str]) -> int:
        return layers_in(names, _SAT_BLOCK)

    def links(self, num_layers: int) -> LinkNames:
        """Links for ``num_layers`` blocks, from the family's own plans on its tiny model."""
        by_native, by_diff = self._template_links()
        n = max(1, num_layers)
        diff_rx = block_regex(self.diffusers_blocks)
        return LinkNames(n, LinkMap(n, by_native, _SAT_BLOCK), DiffusersLinkMap(n, by_diff, diff_rx))

    def _template_links(self) -> tuple[dict[str, Link], dict[str, tuple[Link, int]]]:
        """Template links (block index ``{i}``) read off the family's own plans (no table here)."""
        if self._links is not None:
            return self._links
        comp = self.component
        infos, config = self.tiny_state()
        det = comp.detect(infos, config)
        if det is None:
            raise ConversionError(
                "the CogVideoX family no longer recognises its own model (a weightsmith bug)",
                hint="report this; the family's detection and tiny model disagree",
            )
        options = PlanOptions(config=config)
        sat: dict[str, TensorInfo] = {}
        for op in comp.plan(det, infos, SAT, options):
            ins = [Spec(k, infos[k].shape, infos[k].dtype) for k in op.inputs]
            for s in op.out_specs(ins):
                sat[s.name] = TensorInfo(s.name, s.shape, s.dtype, "F32", 0)
        sat_det = comp.detect(sat, config)
        if sat_det is None or sat_det.layout != SAT:
            raise ConversionError(
                "the CogVideoX family no longer recognises its own SAT layout (a weightsmith bug)",
                hint="report this; the family's detection and plans disagree",
            )
        diff_rx = block_regex(self.diffusers_blocks)
        by_native: dict[str, Link] = {}
        by_diff: dict[str, tuple[Link, int]] = {}
        for op in comp.plan(sat_det, sat, DIFFUSERS, options):
            if len(op.inputs) != 1 or not op.inputs[0].endswith(WEIGHT) or not op.outputs:
                continue
            if not all(o.endswith(WEIGHT) for o in op.outputs):
                continue
            native = templated(op.inputs[0].removeprefix(sat_det.prefix)[: -len(WEIGHT)], _SAT_BLOCK)
            diffusers = tuple(templated(o[: -len(WEIGHT)], diff_rx) for o in op.outputs)
            link = Link(native, diffusers, op, self.partition_label, self.partition_roles[1])
            by_native[native] = link
            for i, d in enumerate(link.diffusers):
                by_diff[d] = (link, i)
        self._links = (by_native, by_diff)
        return self._links
