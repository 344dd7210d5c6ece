"""DC-AE structure from Diffusers-layout shapes: stages, widths, block and sampler types.

What ``AutoencoderDC.diffusers_config`` and the reverse conversion need to know that the names
alone do not say; read from a checkpoint's keys and shapes, never from its file name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weightsmith.families.base import KeyView
from weightsmith.families.sana.dcae_names import DIFF_BLOCK, MULTISCALE_IN, Ctx


def blocks_of(view: KeyView, blocks: str) -> dict[int, dict[int, set[str]]]:
    """stage -> op index -> the Diffusers sub-names under ``blocks.stage.op``."""
    out: dict[int, dict[int, set[str]]] = {}
    for k in view.infos:
        m = DIFF_BLOCK.fullmatch(k)
        if m and m.group(1) == blocks:
            out.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), set()).add(m.group(4))
    return out


def is_sampler(rests: set[str]) -> bool:
    return "conv.weight" in rests


def shape_ctx(view: KeyView, cfg: Mapping[str, Any]) -> Ctx:
    """Reverse-direction facts from a Diffusers checkpoint: its config first, then shapes, then defaults."""
    down = cfg.get("downsample_block_type") or guess_downsample(view) or "pixel_unshuffle"
    return Ctx(
        downsample="conv" if str(down).lower() == "conv" else "pixel_unshuffle",
        out_shortcut=bool(cfg.get("encoder_out_shortcut", True)),
        in_shortcut=bool(cfg.get("decoder_in_shortcut", True)),
    )


def stage_widths(view: KeyView, blocks: str) -> dict[int, int]:
    """Channel width of every stage that has at least one block (sampler layers excluded)."""
    out: dict[int, int] = {}
    for i, ops in blocks_of(view, blocks).items():
        for j, rests in sorted(ops.items()):
            base = f"{blocks}.{i}.{j}."
            if "conv1.weight" in rests:
                out[i] = view.shape(base + "conv1.weight")[0]  # type: ignore[index]
            elif "attn.to_q.weight" in rests:
                out[i] = view.shape(base + "attn.to_q.weight")[1]  # type: ignore[index]
            else:
                continue
            break
    return out


def guess_downsample(view: KeyView) -> str | None:
    """A stride-2 conv keeps the next stage's width; a pixel-unshuffle conv has a quarter of it."""
    widths = stage_widths(view, "encoder.down_blocks")
    for i, ops in sorted(blocks_of(view, "encoder.down_blocks").items()):
        for j, rests in ops.items():
            if is_sampler(rests) and i + 1 in widths:
                out = view.shape(f"encoder.down_blocks.{i}.{j}.conv.weight")[0]  # type: ignore[index]
                return "conv" if out == widths[i + 1] else "pixel_unshuffle"
    shape = view.shape("encoder.conv_in.conv.weight")
    if shape is not None and 1 in widths:
        return "conv" if shape[0] == widths[1] else "pixel_unshuffle"
    return None


def stages(
    view: KeyView, blocks: str, ops: dict[int, dict[int, set[str]]], n: int, given: list[int] | None
) -> dict[str, list[Any]]:
    """Per-stage layers, block type, multiscale kernels, norm type and width of one side.

    A stage without blocks (only the first can be) has no weights to tell its width, type or norm:
    its width comes from the given config, else it copies the next stage's, as do its type and norm.
    """
    widths = stage_widths(view, blocks)
    layers: list[int] = []
    info: dict[int, tuple[str, list[int], str]] = {}
    for i in range(n):
        body = [(j, r) for j, r in sorted(ops.get(i, {}).items()) if not is_sampler(r)]
        layers.append(len(body))
        if not body:
            continue
        evit = [(j, r) for j, r in body if "attn.to_q.weight" in r]
        kernels: list[int] = []
        if evit:
            j, r = evit[0]
            scale_ids = sorted(int(m.group(1)) for x in r if (m := MULTISCALE_IN.fullmatch(x)))
            kernels = [
                view.shape(f"{blocks}.{i}.{j}.attn.to_qkv_multiscale.{q}.proj_in.weight")[-1]  # type: ignore[index]
                for q in scale_ids
            ]
        batch_norm = any(x.endswith("norm.running_mean") for _, r in body for x in r)
        info[i] = (
            "EfficientViTBlock" if evit else "ResBlock",
            kernels,
            "batch_norm" if batch_norm else "rms_norm",
        )
    fallback = ("ResBlock", [], "rms_norm")
    filled = [
        info.get(i) or next((info[k] for k in range(i + 1, n) if k in info), fallback) for i in range(n)
    ]
    chans = []
    for i in range(n):
        if i in widths:
            chans.append(widths[i])
        elif given and len(given) == n:
            chans.append(int(given[i]))
        else:
            chans.append(next((widths[k] for k in range(i + 1, n) if k in widths), widths.get(i - 1, 0)))
    return {
        "layers": layers,
        "types": [t for t, _, _ in filled],
        "scales": [info[i][1] if i in info else [] for i in range(n)],
        "norms": [nm for _, _, nm in filled],
        "chans": chans,
    }
