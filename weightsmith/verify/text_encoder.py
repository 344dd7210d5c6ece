"""A text-encoder candidate scored through the baseline's pipeline.

The prompts (text, one a line) go through the baseline folder's tokenizer and the pipeline's own
``encode_prompt`` with the candidate's encoder in place of the folder's; the embeddings are scored
against the baseline's (``prompt_sqnr``, ``prompt_cosine`` per prompt) and then drive the baseline's
transformer(s), so the usual latent and frame metrics show what the encoder's quantization costs in
the final video.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from weightsmith.errors import UsageError
from weightsmith.verify.inputs import encode_text_prompts, read_text_prompts
from weightsmith.verify.metrics import ItemScore, compare, cosine, sqnr
from weightsmith.verify.models import Candidate, load_transformer, nonfinite_weights
from weightsmith.verify.pipelines import Generation, pipeline_class
from weightsmith.verify.results import CandidateResult
from weightsmith.verify.runner import Item, Runner
from weightsmith.verify.settings import GenerationSettings

TEXT_HINT = "pass --prompts FILE.txt (prompts as text, one a line): the candidate encodes them itself"


def check_text_prompts(cands: list[Candidate], settings: GenerationSettings) -> None:
    """A text-encoder candidate needs prompts as text (embeddings would bypass it)."""
    te = next((c for c in cands if c.text_encoder is not None), None)
    if te is None:
        return
    p = settings.prompts
    if p is None or Path(p).suffix == ".safetensors":
        what = "no --prompts" if p is None else "--prompts as embeddings"
        raise UsageError(f"candidate {te.label} is a text encoder, and {what} were given", hint=TEXT_HINT)


def _folder_bytes(folder: Path) -> int:
    return sum(
        p.stat().st_size for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin")
    )


def _config(folder: Path) -> dict[str, Any]:
    from weightsmith.io.structured import read_json_file

    cfg = read_json_file(folder / "config.json", hint="fix or re-export the pipeline's text_encoder folder")
    return dict(cfg) if isinstance(cfg, dict) else {}


def run_text_encoder_candidate(
    runner: Runner,
    cand: Candidate,
    items: list[Item],
    base_gens: dict[int, Generation],
    tick: Any,
) -> CandidateResult:
    """Encode the prompts with the candidate's encoder, score them, and generate with the baseline's
    transformer(s) from them."""
    base, settings = runner.base, runner.settings
    src = cand.text_encoder
    assert src is not None and base.folder is not None and settings.prompts is not None
    te_dir = base.folder / "text_encoder"
    t = time.perf_counter()
    # Embeddings are computed in float32, as the baseline's are; a quantized encoder computes in it.
    model = load_transformer(src, "weightsmith", _config(te_dir), runner.device, torch.float32)
    load_s = time.perf_counter() - t
    base_bytes = _folder_bytes(te_dir) if te_dir.is_dir() else 0
    res = CandidateResult(
        cand.label,
        cand.loader,
        {"text_encoder": str(src.path)},
        cand.bytes,
        cand.bytes / base_bytes if base_bytes else math.nan,
        load_seconds=load_s,
    )
    bad = nonfinite_weights(model)
    if bad:
        why = f"NaN/Inf in the candidate's weights: text_encoder.{bad[0]}"
        res.items = [ItemScore(it.prompt.label, it.seed, {}, failures=[why]) for it in items]
        tick.update(len(items))
        return res
    texts = read_text_prompts(settings.prompts)
    cls = pipeline_class(base.family, base.variant)
    mine = encode_text_prompts(
        base.folder, base.family, cls, texts, settings.negative_prompt, runner.device, text_encoder=model
    )
    del model
    by_label = {p.label: p for p in mine}
    cand_items = [Item(it.index, by_label[it.prompt.label], it.seed, it.image) for it in items]
    experts = {e: runner.baseline_module(e) for e in base.experts}
    gens = runner.run(experts, cand_items, tick)
    for it, cit, gen in zip(items, cand_items, gens):
        score = compare(base_gens[it.index], gen, it.prompt.label, it.seed)
        score.metrics["prompt_sqnr"] = sqnr(it.prompt.embeds, cit.prompt.embeds)
        score.metrics["prompt_cosine"] = cosine(it.prompt.embeds, cit.prompt.embeds)
        score.exact = score.exact and torch.equal(it.prompt.embeds, cit.prompt.embeds)
        res.items.append(score)
    del experts, gens
    runner.release_baseline()
    return res
