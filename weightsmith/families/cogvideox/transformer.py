"""CogVideoX DiT component: detection, the conversion plan (qkv and adaLN surgery) and configs.

The key tables live in ``transformer_keys`` and the variant rules in ``transformer_detect``;
this module puts them together as the registered ``Component``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightsmith.errors import ConversionError
from weightsmith.families.base import (
    DIFFUSION_PREFIX,
    NO_OPTIONS,
    Component,
    Detection,
    PlanOptions,
    find_prefix,
    register,
)
from weightsmith.families.cogvideox._common import (
    COMFY,
    DIFFUSERS,
    FAMILY,
    SAT,
    local_keys,
)
from weightsmith.families.cogvideox.comfy_keys import COMFY_MARKERS, COMFY_REQUIRED_MARKERS
from weightsmith.families.cogvideox.config_fields import CONFIG_FIELDS
from weightsmith.families.cogvideox.export import CogVideoXTransformerExport
from weightsmith.families.cogvideox.generation import CogVideoXGeneration
from weightsmith.families.cogvideox.inputs import CogVideoXInputs
from weightsmith.families.cogvideox.lora import CogVideoXLora
from weightsmith.families.cogvideox.positions import sincos_table, table_rows
from weightsmith.families.cogvideox.quant import TRANSFORMER_QUANT
from weightsmith.families.cogvideox.tiny import COGVIDEOX_INIT, TRANSFORMER_VARIANTS, tiny_transformer_config
from weightsmith.families.cogvideox.transformer_detect import (
    CONFIG_ONLY,
    grid_from_rows,
    grid_settings,
    transformer_facts,
)
from weightsmith.families.cogvideox.transformer_keys import (
    ADALN_TO_DIFF,
    ADALN_TO_SAT,
    DIFF_MARKERS,
    DIFF_POS,
    DIFF_REQUIRED_MARKERS,
    SAT_MARKERS,
    count_layers,
    foreign_reason,
    sat_drop_reason,
    transformer_units,
)
from weightsmith.families.ops import Derive, Drop, Fuse, Op, Regroup, Rename, Spec, Split
from weightsmith.io.base import TensorInfo


@register
class CogVideoXTransformer(Component):
    """CogVideoX DiT (2B, 5B, 5B-I2V, 1.5-5B, 1.5-5B-I2V) in SAT, Diffusers and ComfyUI layouts."""

    family = FAMILY
    component = "transformer"
    layouts = (SAT, DIFFUSERS, COMFY)
    variants = TRANSFORMER_VARIANTS
    diffusers_class = "CogVideoXTransformer3DModel"
    config_fields = CONFIG_FIELDS
    quant = TRANSFORMER_QUANT
    inputs = CogVideoXInputs()
    export = CogVideoXTransformerExport()
    generation = CogVideoXGeneration()
    lora = CogVideoXLora()
    label = "CogVideoX transformer"
    tiny_init = COGVIDEOX_INIT

    # ---------------------------------------------------------------- detection
    def detect(
        self, infos: Mapping[str, TensorInfo], config: Mapping[str, Any] | None = None
    ) -> Detection | None:
        """Layout from marker keys, variant from shapes (scale-free), never from the file name."""
        keys = list(infos)
        prefix = find_prefix(keys, SAT_MARKERS, (DIFFUSION_PREFIX, ""))
        layout = SAT
        if prefix is None:
            prefix = find_prefix(keys, DIFF_MARKERS, ("", DIFFUSION_PREFIX))
            layout = DIFFUSERS
        if prefix is None:
            prefix = find_prefix(keys, COMFY_MARKERS, ("", DIFFUSION_PREFIX))
            layout = COMFY
            if prefix is None:
                return None
        local, _ = local_keys(infos, prefix)
        shapes = {k: infos[full].shape for k, full in local.items()}
        if layout != SAT:
            # CogView3/4 share the Diffusers names; CogVideoX's norm1.linear is 6*hidden and it
            # has a time embedding.
            marker, required = (
                (DIFF_MARKERS[0], DIFF_REQUIRED_MARKERS)
                if layout == DIFFUSERS
                else (COMFY_MARKERS[0], COMFY_REQUIRED_MARKERS)
            )
            if not all(m in shapes for m in required):
                return None
            if shapes[marker][0] != 6 * shapes["patch_embed.text_proj.weight"][0]:
                return None
        else:
            adaln = shapes.get("mixins.adaln_layer.adaLN_modulations.0.1.weight")
            text_proj = shapes.get("mixins.patch_embed.text_proj.weight")
            if adaln is not None and text_proj is not None and adaln[0] != 12 * text_proj[0]:
                return None
        num_layers = count_layers(local, layout)
        variant, facts, notes = transformer_facts(shapes, layout, num_layers, config)
        return Detection(FAMILY, self.component, layout, variant, prefix, tuple(notes), facts)

    # ---------------------------------------------------------------- planning
    def plan(
        self,
        detection: Detection,
        infos: Mapping[str, TensorInfo],
        target_layout: str,
        options: PlanOptions = NO_OPTIONS,
    ) -> list[Op]:
        """Ops from ``detection.layout`` to ``target_layout``; every input key is consumed or refused."""
        self.check_plan(detection, target_layout, options)
        src = detection.layout
        what = f"{self.title()} ({src} layout)"
        local, outside = local_keys(infos, detection.prefix)
        out_prefix = options.prefix or (DIFFUSION_PREFIX if target_layout == SAT else "")
        num_layers = count_layers(local, src)
        units = transformer_units(num_layers)
        known: set[str] = set()
        for u in units:
            known.update(u.side(src))

        # Keys that are not DiT weights: T5/VAE parts of a SAT engine checkpoint, and SAT-only tables.
        extra: list[tuple[str, str, str]] = []  # (full key, name to keep it under, reason to drop it)
        unknown: list[str] = []
        for full in outside:
            reason = foreign_reason(full) if src == SAT else None
            if reason is None:
                unknown.append(full)
            else:
                extra.append((full, full, reason))
        for k, full in local.items():
            if k in known:
                continue
            reason = None
            keep_as = out_prefix + k
            if src == SAT:
                reason = foreign_reason(k)
                keep_as = k if reason else keep_as
                reason = reason or sat_drop_reason(k)
            if reason is None:
                unknown.append(full)
            else:
                extra.append((full, keep_as, reason))
        self.check_keys(
            what,
            unknown,
            hint="check that this is a CogVideoX DiT checkpoint (LoRAs and other families differ)",
        )

        # Missing keys: core units must be complete; optional groups (ofs embedding) all-or-none;
        # the patch bias is optional on its own; the positional table is required for 5B-I2V.
        present_groups = {u.group for u in units if any(k in local for k in u.side(src))}
        missing: list[str] = []
        for u in units:
            if u.group == "pos":
                needed = detection.variant == "5b-i2v"
            elif u.group == "patch_bias":
                needed = False
            else:
                needed = u.group == "core" or u.group in present_groups
            missing.extend(detection.prefix + k for k in u.side(src) if needed and k not in local)
        if num_layers == 0:
            marker = {SAT: SAT_MARKERS[0], COMFY: COMFY_MARKERS[0]}.get(src, DIFF_MARKERS[0])
            missing.append(detection.prefix + marker)
        self.check_keys(
            what,
            missing=missing,
            hint="the checkpoint is incomplete or truncated (a LoRA-trained SAT file stores qkv under "
            "LoRA names: merge or export the LoRA first)",
        )

        variant = self._variant_for_plan(detection, options)
        ops: list[Op] = []
        for u in units:
            srcs = [k for k in u.side(src) if k in local]
            if not srcs and u.kind != "pos":
                continue
            ins = tuple(local[k] for k in srcs)
            outs = tuple(out_prefix + k for k in u.side(target_layout))
            if u.kind == "pos":
                ops.extend(self._pos_ops(detection, variant, infos, ins, outs, target_layout, options))
            elif src == target_layout or SAT not in (src, target_layout) or u.kind == "rename":
                # Same layout, or Diffusers <-> ComfyUI: the same tensors under other names.
                ops.extend(Rename(i, o) for i, o in zip(ins, outs))
            elif u.kind == "qkv":
                # SAT's fused query_key_value rows are [q; k; v] (torch.chunk(3, dim=0) in the official map).
                ops.append(Split(ins[0], outs) if src == SAT else Fuse(ins, outs[0]))
            elif u.kind == "adaln":
                if src == SAT:
                    ops.append(Regroup(ins, outs, (12,), ADALN_TO_DIFF, 0, label="regrouped"))
                else:
                    ops.append(Regroup(ins, outs, (6, 6), ADALN_TO_SAT, 0, label="regrouped"))
        for full, keep_as, reason in extra:
            ops.append(Rename(full, keep_as) if src == target_layout else Drop(full, reason))
        return ops

    def _variant_for_plan(self, detection: Detection, options: PlanOptions) -> str | None:
        """The detection's variant, or the one the plan's config settles (2B vs 5B by RoPE)."""
        if detection.variant is not None or not options.config:
            return detection.variant
        rope = options.config.get("use_rotary_positional_embeddings")
        if (
            detection.facts.get("generation") == "1.0"
            and detection.facts.get("in_channels") == detection.facts.get("out_channels")
            and rope is not None
        ):
            return "5b" if rope else "2b"
        return None

    def _pos_ops(
        self,
        detection: Detection,
        variant: str | None,
        infos: Mapping[str, TensorInfo],
        ins: tuple[str, ...],
        outs: tuple[str, ...],
        target: str,
        options: PlanOptions,
    ) -> list[Op]:
        """The positional table: kept, dropped (2B's sincos table to Diffusers) or derived (2B to
        ComfyUI, whose detection reads a missing table as RoPE: see ``positions``)."""
        if ins:
            if target == COMFY or detection.layout == target or variant != "2b":
                return [Rename(ins[0], outs[0])]
            why = (
                "Diffusers recomputes it as a non-persistent buffer"
                if target == DIFFUSERS
                else "SAT output of 2B leaves it out, as from Diffusers (SAT rebuilds it)"
            )
            return [Drop(ins[0], f"CogVideoX-2B's fixed sincos table; {why}")]
        if target == COMFY and variant == "2b":
            import torch  # here, not at import: the CLI's startup stays free of torch

            dim = int(detection.facts["hidden_size"])
            patch = int(detection.facts["patch_size"])
            settings = grid_settings("1.0", detection.facts, options.config)
            rows = table_rows(settings, patch)
            return [
                Derive(
                    outs[0],
                    (1, rows, dim),
                    torch.float32,
                    lambda: sincos_table(dim, settings, patch),
                    reason="CogVideoX-2B's sincos table, which ComfyUI's detection needs to see",
                )
            ]
        # Diffusers -> SAT: nothing is derived. SAT's 2B builds its sincos table in reinit() and
        # loads with strict=False, while the official SAT -> Diffusers converter keeps any table it
        # finds (rule 17 renames it to patch_embed.pos_embedding) and then loads strictly, which a
        # 2B model refuses. Leaving it out is what makes our SAT output convert back exactly.
        return []

    # ---------------------------------------------------------------- config
    def diffusers_config(self, detection: Detection, infos: Mapping[str, TensorInfo]) -> dict[str, Any]:
        """CogVideoXTransformer3DModel kwargs.

        Shapes decide everything they can; config-only knobs come from the config the detection
        carried, else from the released models; a learned table's length fixes the sample size.
        """
        shapes = self._diffusers_shapes(detection, infos)
        num_layers = count_layers(shapes, DIFFUSERS)
        hints = dict(detection.facts.get("config") or {})
        variant, facts, notes = transformer_facts(shapes, DIFFUSERS, num_layers, hints or None)
        if variant is None and detection.variant is not None:
            variant = detection.variant
        if "patch_size" not in facts or "hidden_size" not in facts or "attention_head_dim" not in facts:
            raise ConversionError(
                "cannot derive a CogVideoX config: " + ("; ".join(notes) or "key shapes missing"),
                hint="check the checkpoint is a complete CogVideoX transformer",
            )
        gen = facts.get("generation")
        learned = variant == "5b-i2v" or (variant is None and DIFF_POS in shapes)
        if variant is not None:
            rope = variant != "2b"
        else:  # diffusers refuses a learned table without RoPE
            rope = learned or bool(hints.get("use_rotary_positional_embeddings", False))
        cfg: dict[str, Any] = {
            "num_attention_heads": facts["hidden_size"] // facts["attention_head_dim"],
            "attention_head_dim": facts["attention_head_dim"],
            "in_channels": facts["in_channels"],
            "out_channels": facts["out_channels"],
            "flip_sin_to_cos": True,
            "freq_shift": 0,
            "time_embed_dim": facts["time_embed_dim"],
            "ofs_embed_dim": facts.get("ofs_embed_dim"),
            "text_embed_dim": facts["text_embed_dim"],
            "num_layers": num_layers,
            "dropout": 0.0,
            "attention_bias": "transformer_blocks.0.attn1.to_q.bias" in shapes,
            "patch_size": facts["patch_size"],
            "patch_size_t": facts["patch_size_t"],
            "activation_fn": "gelu-approximate",
            "timestep_activation_fn": "silu",
            "norm_elementwise_affine": "norm_final.weight" in shapes,
            "norm_eps": 1e-5,
            "use_rotary_positional_embeddings": rope,
            "use_learned_positional_embeddings": learned,
            # 1.5's Linear patch embedding always has a bias; patch_bias only shapes the 1.0 Conv2d.
            "patch_bias": ("patch_embed.proj.bias" in shapes) if gen == "1.0" else False,
        }
        settings = grid_settings(gen, facts, None)
        for k in CONFIG_ONLY:
            if k in settings and k not in ("patch_size", "patch_size_t"):
                cfg[k] = settings[k]
        rows = facts.get("pos_embedding_rows") or detection.facts.get("pos_embedding_rows")
        if rows:
            grid = grid_from_rows(
                int(rows), cfg["patch_size"], int(cfg["temporal_compression_ratio"]), settings
            )
            if grid is None and learned:
                raise ConversionError(
                    f"the learned positional table has {rows} rows, which fits no sample size with "
                    f"{settings['max_text_seq_length']} text tokens and {settings['sample_frames']} frames",
                    hint="pass the Diffusers config.json (sample_height/width/frames, max_text_seq_length)",
                )
            if grid is not None:
                cfg.update(grid)
        return cfg

    def _diffusers_shapes(
        self, detection: Detection, infos: Mapping[str, TensorInfo]
    ) -> dict[str, tuple[int, ...]]:
        """Diffusers-layout shapes (no prefix) of ``infos``; SAT shapes go through the plan's out_specs."""
        own = self.detect(infos)  # the infos may be in another layout than the detection passed in
        if own is None:
            raise ConversionError(
                "the tensors given for the config are not a CogVideoX transformer",
                hint="derive the config from the DiT's own weights (SAT or Diffusers layout)",
            )
        if own.layout == DIFFUSERS:
            local, _ = local_keys(infos, own.prefix)
            return {k: infos[full].shape for k, full in local.items()}
        if detection.layout == SAT and detection.variant is not None:
            own = detection
        shapes: dict[str, tuple[int, ...]] = {}
        for op in self.plan(own, infos, DIFFUSERS):
            ins = [Spec(k, infos[k].shape, infos[k].dtype_name) for k in op.inputs]
            for spec in op.out_specs(ins):
                shapes[spec.name] = spec.shape
        return shapes

    # ---------------------------------------------------------------- tiny models
    def tiny_config(self, variant: str, wide: bool = False) -> dict[str, Any]:
        """The tiny (or wide) CogVideoXTransformer3DModel kwargs of ``variant`` (see cogvideox/tiny.py)."""
        return tiny_transformer_config(variant, wide)
