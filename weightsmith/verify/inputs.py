"""What goes into a generation besides the weights: prompt embeddings, the negative prompt, an image.

Prompt embeddings are computed once and handed to every pipeline as ``prompt_embeds``, so the
baseline and each candidate see the same numbers and no text encoder runs per candidate. They come
from (in order of preference) a safetensors file of embeddings, a text file of prompts encoded once
at full precision by the baseline pipeline's own text encoder, or the seed (tiny fixtures and
text-encoder-free checks).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weightsmith.errors import InputError, UsageError
from weightsmith.verify.family import generation


@dataclass
class Prompt:
    """One prompt's embeddings (batch 1). ``mask``s: attention masks, for pipelines that take them."""

    label: str
    embeds: torch.Tensor
    negative: torch.Tensor | None
    mask: torch.Tensor | None = None
    negative_mask: torch.Tensor | None = None

    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.embeds, self.negative, self.mask, self.negative_mask):
            if t is not None:
                h.update(str((tuple(t.shape), str(t.dtype))).encode())
                h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]


def text_shape(family: str, config: dict[str, Any], text_len: int | None) -> tuple[int, int]:
    """(tokens, width) of the prompt embeddings a transformer takes."""
    return generation(family).text_shape(config, text_len)


def seeded_prompt(family: str, config: dict[str, Any], seed: int, text_len: int | None = None) -> Prompt:
    """Prompt embeddings drawn from ``seed`` (unit normal), shaped for this transformer."""
    length, width = text_shape(family, config, text_len)
    g = torch.Generator().manual_seed(1_000_003 * (seed + 1))
    emb = torch.randn(1, length, width, generator=g)
    neg = torch.randn(1, length, width, generator=g)
    mask = torch.ones(1, length, dtype=torch.long) if generation(family).attention_masks else None
    return Prompt(f"seed{seed}", emb, neg, mask, None if mask is None else mask.clone())


PROMPTS_HINT = "pass a .safetensors file of embeddings or a .txt of prompts, one a line"
MAX_TEXT_PROMPTS_BYTES = 4 * 2**20


def prompt_path(path: str | Path) -> Path:
    """``--prompts`` as a regular file, or an error that says what it is instead."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"--prompts {p} is a directory; a file is expected", hint=PROMPTS_HINT)
    if not p.exists():
        raise InputError(f"--prompts {p} does not exist", hint=PROMPTS_HINT)
    if not p.is_file():
        raise InputError(f"--prompts {p} is not a regular file", hint=PROMPTS_HINT)
    return p


def read_text_prompts(path: str | Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file of prompts (bounded: prompts are short)."""
    p = prompt_path(path)
    if p.stat().st_size > MAX_TEXT_PROMPTS_BYTES:
        raise InputError(
            f"--prompts {p} is {p.stat().st_size} bytes, more than a file of prompts holds",
            hint=PROMPTS_HINT,
        )
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"--prompts {p} is not UTF-8 text", hint=PROMPTS_HINT) from None
    texts = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not texts:
        raise InputError(f"--prompts {p} holds no prompt", hint="write one prompt per line")
    return texts


def load_prompt_file(path: str | Path, family: str) -> list[Prompt]:
    """Prompts from a safetensors file: ``prompt_embeds`` [N, L, D] and optionally
    ``negative_prompt_embeds``, ``prompt_attention_mask``, ``negative_prompt_attention_mask``."""
    from safetensors.torch import load_file

    p = prompt_path(path)
    try:
        d = load_file(str(p))
    except Exception as e:  # noqa: BLE001 - any parse failure is the same user error
        msg = " ".join(str(e).split())[:160]
        raise InputError(
            f"--prompts {p} is not a readable safetensors file ({msg})",
            hint="save it with safetensors.torch.save_file({'prompt_embeds': ...}, path), or pass a text file of prompts",
        ) from None
    if "prompt_embeds" not in d or d["prompt_embeds"].dim() != 3:
        raise InputError(
            f"--prompts {p} holds no 'prompt_embeds' tensor of shape [N, tokens, width]",
            hint="save one with safetensors.torch.save_file({'prompt_embeds': ...}, path)",
        )
    n = d["prompt_embeds"].shape[0]
    if n < 1 or d["prompt_embeds"].shape[1] < 1:
        raise InputError(f"--prompts {p} holds no prompt (prompt_embeds is empty)", hint=PROMPTS_HINT)
    for key in ("negative_prompt_embeds", "prompt_attention_mask", "negative_prompt_attention_mask"):
        if key in d and (d[key].dim() < 2 or d[key].shape[0] != n):
            raise InputError(
                f"--prompts {p}: {key} {list(d[key].shape)} does not have one row per prompt ({n})",
                hint="save every tensor with the same first dimension N",
            )
    for key in ("prompt_embeds", "negative_prompt_embeds"):
        t = d.get(key)
        if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise InputError(f"--prompts {p}: {key} holds NaN or Inf", hint="re-create the embeddings")

    def row(key: str, i: int) -> torch.Tensor | None:
        return d[key][i : i + 1].clone() if key in d else None

    masks = generation(family).attention_masks
    out = []
    for i in range(n):
        mask = row("prompt_attention_mask", i)
        if masks and mask is None:
            mask = torch.ones(1, d["prompt_embeds"].shape[1], dtype=torch.long)
        nmask = row("negative_prompt_attention_mask", i)
        if masks and nmask is None and "negative_prompt_embeds" in d:
            nmask = torch.ones(1, d["negative_prompt_embeds"].shape[1], dtype=torch.long)
        out.append(
            Prompt(f"prompt{i}", row("prompt_embeds", i), row("negative_prompt_embeds", i), mask, nmask)
        )
    return out


def encode_text_prompts(
    folder: str | Path,
    family: str,
    pipeline_cls: type,
    prompts: list[str],
    negative: str,
    device: torch.device,
    text_encoder: Any = None,
) -> list[Prompt]:
    """Encode text prompts once, at full precision, with the baseline pipeline folder's text encoder
    (or ``text_encoder``, a candidate's module, through the same tokenizer and pipeline code)."""
    folder = Path(folder)
    if not (folder / "text_encoder").is_dir() or not (folder / "tokenizer").is_dir():
        raise UsageError(
            f"text prompts need a text encoder, and {folder} has none",
            hint="pass --prompts as a .safetensors file of embeddings, or a pipeline folder with text_encoder/",
        )
    import inspect

    from diffusers.utils import logging as dlogging

    from weightsmith.verify.models import dtype_kwarg

    params = inspect.signature(pipeline_cls.__init__).parameters
    skip: dict[str, Any] = {
        k: None
        for k in ("transformer", "transformer_2", "vae", "image_encoder", "image_processor")
        if k in params
    }
    if text_encoder is not None:
        skip["text_encoder"] = text_encoder
    quiet = dlogging.is_progress_bar_enabled()
    dlogging.disable_progress_bar()
    try:
        pipe = pipeline_cls.from_pretrained(
            str(folder), local_files_only=True, **skip, **dtype_kwarg(torch.float32)
        )
    finally:
        if quiet:
            dlogging.enable_progress_bar()
    pipe.text_encoder.to(device)
    gen = generation(family)
    out = []
    with torch.no_grad():
        for i, text in enumerate(prompts):
            pe, pm, ne, nm = gen.encode_prompt(pipe, text, negative, device)
            out.append(
                Prompt(
                    f"prompt{i}",
                    pe.float().cpu(),
                    ne.float().cpu(),
                    None if pm is None else pm.cpu(),
                    None if nm is None else nm.cpu(),
                )
            )
    del pipe
    return out


def seeded_image(seed: int, height: int, width: int) -> Any:
    """A smooth random RGB picture (PIL) for image-to-video runs without ``--image``."""
    import torch.nn.functional as F
    from PIL import Image

    g = torch.Generator().manual_seed(7_919 * (seed + 1))
    small = torch.rand(1, 3, 4, 4, generator=g)
    big = F.interpolate(small, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    arr = (big[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def load_image(path: str | Path, height: int, width: int) -> Any:
    """The ``--image`` file as RGB, resized to the generation size."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path).convert("RGB")
    except (OSError, UnidentifiedImageError):
        raise InputError(f"--image {path} is not a readable image", hint="pass a PNG or JPEG file") from None
    return img.resize((width, height), Image.BICUBIC)


def image_digest(img: Any) -> str:
    return hashlib.sha256(img.tobytes()).hexdigest()[:16]
