"""CogVideoX (2B, 5B, 5B-I2V, 1.5-5B, 1.5-5B-I2V): the DiT and the 3D VAE in SAT and Diffusers layouts.

CogVideoX is the one family whose layouts differ by tensor surgery and not only by names. Importing
this package registers both components (``cogvideox/transformer`` and ``cogvideox/vae``).
"""

from weightsmith.families.cogvideox.text_encoder import CogVideoXTextEncoder
from weightsmith.families.cogvideox.tiny import tiny_transformer_config, tiny_vae_config
from weightsmith.families.cogvideox.transformer import CogVideoXTransformer
from weightsmith.families.cogvideox.vae import CogVideoXVAE

__all__ = [
    "CogVideoXTextEncoder",
    "CogVideoXTransformer",
    "CogVideoXVAE",
    "tiny_transformer_config",
    "tiny_vae_config",
]
