"""weightsmith: convert, quantize and verify the weights of video and image diffusion models."""

__version__ = "0.1.0"
