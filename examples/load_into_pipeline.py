"""Load a quantized transformer (GGUF, INT8/FP8/INT4 folder, ComfyUI file) into a diffusers
pipeline and generate with it.

    python examples/load_into_pipeline.py Wan2.1-T2V-1.3B-Diffusers/ out/model-Q8_0.gguf --steps 20

weightsmith.load_model builds the pipeline's transformer class from the artifact (GGUF weights
stay quantized and compute in --dtype); the rest of the pipeline comes from PIPELINE. Prompts go
in as embeddings here (``prompt_embeds``), so the example also runs on a pipeline saved without
its text encoder, such as weightsmith.tiny_pipeline's; with a text encoder, pass ``prompt=``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

import weightsmith


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("pipeline", type=Path, help="a Diffusers pipeline folder (the baseline)")
    ap.add_argument("artifact", type=Path, help="a quantized transformer weightsmith wrote")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--text-len", type=int, default=512, help="tokens of the prompt embeddings")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)

    transformer = weightsmith.load_model(args.artifact, device=args.device, dtype=args.dtype)
    # No text encoder is loaded: the prompt goes in as embeddings below.
    pipe = DiffusionPipeline.from_pretrained(
        str(args.pipeline), transformer=transformer, text_encoder=None, tokenizer=None
    )
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)

    width = int(transformer.config["text_dim"])
    g = torch.Generator("cpu").manual_seed(0)
    embeds = torch.randn(1, args.text_len, width, generator=g).to(args.device, transformer.dtype)
    video = pipe(
        prompt_embeds=embeds,
        negative_prompt_embeds=torch.zeros_like(embeds),
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        num_inference_steps=args.steps,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
    ).frames[0]
    finite = bool(torch.isfinite(torch.as_tensor(video)).all())
    print(f"{type(transformer).__name__} from {args.artifact.name}: {len(video)} frames of {video.shape[1:]}")
    return 0 if finite and video.std() > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
