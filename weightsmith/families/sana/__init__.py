"""Sana: the DiT (``transformer``) and its DC-AE autoencoder (``vae``), original <-> Diffusers.

Importing this package registers both components (see ``weightsmith/families/__init__.py``).
"""

from weightsmith.families.sana.dcae import DCAE
from weightsmith.families.sana.text_encoder import SanaTextEncoder
from weightsmith.families.sana.transformer import SanaTransformer

__all__ = ["SanaTextEncoder", "DCAE", "SanaTransformer"]
