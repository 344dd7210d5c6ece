"""What several bench scripts build the same way: a synthetic transformer with Wan2.1-T2V-1.3B's
real widths (dim 1536, FFN 8960, text 4096) and random ~N(0, 0.02) weights, so rows are as wide as
a real model's without downloading one. Imported by scripts run as ``python bench/NAME.py``
(their folder is first on ``sys.path``)."""

from __future__ import annotations

from pathlib import Path

# WanTransformer3DModel kwargs of Wan2.1-T2V-1.3B, less ``num_layers`` (each bench picks its own).
WAN_1_3B = dict(
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
)

# Prompts the text-encoder benches encode: short, varied captions as a video pipeline gets them.
PROMPTS = [
    "a red car driving along the coast at sunset",
    "a bird flying above ocean waves",
    "city street at night with rain and lights",
    "the quick brown fox jumps over the lazy dog",
    "snow on a mountain river with a boat",
]


def synthetic_wan_folder(dst: Path, layers: int) -> Path:
    """A bf16 Diffusers component folder (seeded) with Wan2.1-1.3B's shapes and ``layers`` blocks;
    what ``write_diffusers_component`` returns. Streams one tensor at a time from the meta model."""
    import diffusers
    import torch

    from weightsmith.io.writers import write_diffusers_component

    cfg = {**WAN_1_3B, "num_layers": layers}
    with torch.device("meta"):
        model = diffusers.WanTransformer3DModel(**cfg)
    specs = [(k, tuple(v.shape), torch.bfloat16) for k, v in sorted(model.state_dict().items())]
    g = torch.Generator().manual_seed(0)

    def stream():
        for k, shape, dtype in specs:
            yield k, (torch.randn(shape, generator=g) * 0.02).to(dtype)

    return write_diffusers_component(dst, specs, stream(), {"_class_name": "WanTransformer3DModel", **cfg})
