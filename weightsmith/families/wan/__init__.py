"""Wan 2.1 / 2.2: the transformer (WanModel / WanTransformer3DModel, WanVACETransformer3DModel)
and the video VAE (AutoencoderKLWan), each in Wan's original names and Diffusers' names.

Importing this package registers both components.
"""

from weightsmith.families.wan.text_encoder import WanTextEncoder
from weightsmith.families.wan.transformer import WanTransformer
from weightsmith.families.wan.vae import WanVAE

__all__ = ["WanTextEncoder", "WanTransformer", "WanVAE"]
