"""How Sana's transformer and DC-AE are exported (see ``weightsmith.families.export``).

Every size is free: batch, height, width (multiples of the patch size) and prompt length. One
patch: diffusers' cross-attention repeats the prompt mask per head and views it back with a
``-1`` that torch.export cannot prove equal to 1 for a free batch; the export swaps in a
processor that hands scaled-dot-product attention the same mask as a broadcast ``[B, 1, 1, T]``
bias (the same numbers).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from weightsmith.families.export import TransformerExport, VAEGeometry

if TYPE_CHECKING:  # torch on use: the registry is read torch-free (start-up)
    import torch
    from torch import nn


class BroadcastMaskCrossAttention:
    """Cross-attention with the prompt mask broadcast over heads and queries (see the module doc)."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        import torch.nn.functional as F

        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = attn.to_q(hidden_states), attn.to_k(ctx), attn.to_v(ctx)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        q, k, v = (t.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for t in (q, k, v))
        if attention_mask is not None and attention_mask.ndim == 3:
            attention_mask = attention_mask.unsqueeze(1)  # [B, 1, T] -> [B, 1, 1, T]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0)
        out = out.transpose(1, 2).flatten(2).to(q.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor


class SanaTransformerExport(TransformerExport):
    def multiples(self, config: Mapping[str, Any]) -> dict[str, int]:
        p = int(config.get("patch_size") or 1)
        return {"height": p, "width": p}

    @contextlib.contextmanager
    def patched(self, model: nn.Module) -> Iterator[nn.Module]:
        blocks = [
            b for b in getattr(model, "transformer_blocks", []) if getattr(b, "attn2", None) is not None
        ]
        saved = [b.attn2.processor for b in blocks]
        try:
            for b in blocks:
                b.attn2.processor = BroadcastMaskCrossAttention()
            yield model
        finally:
            for b, proc in zip(blocks, saved, strict=True):
                b.attn2.processor = proc


def dcae_geometry(config: Mapping[str, Any]) -> VAEGeometry:
    """DC-AE: an image autoencoder compressing by 2 per encoder stage after the first."""
    return VAEGeometry(
        in_channels=int(config["in_channels"]),
        latent_channels=int(config["latent_channels"]),
        spatial=2 ** (len(config["encoder_block_types"]) - 1),
        video=False,
    )
