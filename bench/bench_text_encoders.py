"""Text-encoder fidelity of GGUF recipes and fp8/int8 files: prompt-embedding cosine and SQNR per prompt.

Builds the tiny wide (d_model 256, so every K-type applies) UMT5 (Wan) and T5 (CogVideoX)
encoders with a locally trained SentencePiece tokenizer (tests/quantize/textenc_kit.py), writes
each recipe with `weightsmith quantize` (GGUF; ComfyUI's scaled fp8 for T5/UMT5; fp8 and int8
compressed-tensors folders), loads it with weightsmith's loader (quantized weights kept) and compares ``last_hidden_state`` with the source model's, prompt by prompt (tokens
from the tokenizer, padding masked out of the metrics). Random weights: the numbers compare
recipes and check the path end to end; a trained UMT5-XXL's own numbers need its weights.

    PYTHONPATH=. .venv/bin/python bench/bench_text_encoders.py [--out reports/text_encoders.md]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "quantize"))

from benchlib import PROMPTS  # noqa: E402

RECIPES = ["F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M"]
# label -> (quantize arguments, output suffix; "" is a folder); ComfyUI has no Sana (no comfy row there)
LINEAR = {
    "fp8 scaled (ComfyUI)": (["--scheme", "fp8", "--format", "comfy-legacy"], ".safetensors"),
    "fp8 (compressed-tensors)": (["--scheme", "fp8"], ""),
    "int8 (compressed-tensors)": (["--scheme", "int8"], ""),
}
CLASSES = {"wan": "UMT5EncoderModel", "cogvideox": "T5EncoderModel", "sana": "Gemma2Model"}
KEEP = (
    "<!-- verify-text-encoder:start -->",
    "<!-- verify-text-encoder:end -->",
)  # bench_verify_text_encoder.py's


def embed(model: torch.nn.Module, sp, prompt: str) -> torch.Tensor:
    ids = sp.encode(prompt) + [1]  # eos, as T5 tokenizers append it
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state[0].float()


def metrics(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float]:
    cos = torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), 0).item()
    noise = (ref - got).pow(2).sum().item()
    sqnr = float("inf") if noise == 0 else 10 * torch.log10(ref.pow(2).sum() / noise).item()
    return cos, sqnr


def main() -> None:
    import sentencepiece as spm
    import transformers
    from textenc_kit import t5_folder

    from weightsmith.load import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "reports" / "text_encoders.md"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, cls_name in CLASSES.items():
            src = t5_folder(Path(tmp) / family, family, wide=True)
            sp = spm.SentencePieceProcessor(model_file=str(src / "spiece.model"))
            ref_model = getattr(transformers, cls_name).from_pretrained(str(src)).eval()
            refs = [embed(ref_model, sp, p) for p in PROMPTS]
            jobs = [(r, ["--scheme", f"gguf:{r}"], ".gguf") for r in RECIPES]
            jobs += [(label, a, ext) for label, (a, ext) in LINEAR.items() if family != "sana" or ext == ""]
            for recipe, qargs, ext in jobs:
                out = Path(tmp) / f"{family}-{recipe.split()[0]}-{len(rows)}{ext}"
                subprocess.run(
                    [sys.executable, "-m", "weightsmith", "quantize", str(src), str(out), *qargs],
                    check=True,
                    capture_output=True,
                )
                size = sum(f.stat().st_size for f in out.iterdir()) if out.is_dir() else out.stat().st_size
                model = load_model(out)
                got = [metrics(r, embed(model, sp, p)) for r, p in zip(refs, PROMPTS)]
                rows.append(
                    (
                        family,
                        cls_name,
                        recipe,
                        size,
                        min(c for c, _ in got),
                        statistics.median(c for c, _ in got),
                        min(s for _, s in got),
                        statistics.median(s for _, s in got),
                    )
                )
    lines = [
        "# Text-encoder fidelity of GGUF recipes, fp8 and int8",
        "",
        "`bench/bench_text_encoders.py`: tiny wide random-weight encoders (d_model 256, 2 blocks,",
        "d_ff 512, vocab 256), written by `weightsmith quantize --scheme gguf:TYPE` in llama.cpp's",
        "`t5encoder` layout (Gemma-2: hidden 256, head_dim 128, its `gemma2` layout; same tokenizer),",
        "loaded by `weightsmith.load.load_model` (quantized blocks kept), compared",
        f"with the source model on {len(PROMPTS)} prompts tokenized by a locally trained SentencePiece",
        "model: cosine and SQNR of the prompt embedding (last_hidden_state), worst and median prompt.",
        "Random weights: this ranks recipes and checks the path; real UMT5-XXL numbers need its weights.",
        "fp8 scaled (ComfyUI): `--scheme fp8 --format comfy-legacy` (e4m3, one scale per tensor; T5/UMT5",
        "only: ComfyUI has no Sana); fp8 / int8 (compressed-tensors): `--scheme fp8` / `int8` folders",
        "(one scale per output channel). File bytes of a folder: its files' sum (config included).",
        "",
        "| family | class | recipe | file bytes | min cos | median cos | min SQNR dB | median SQNR dB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f, c, r, size, cmin, cmed, smin, smed in rows:
        lines.append(f"| {f} | {c} | {r} | {size} | {cmin:.6f} | {cmed:.6f} | {smin:.1f} | {smed:.1f} |")
    lines += [
        "",
        "Reading it: F16 is lossless to ~52 dB; every step down costs far more in the embedding than in",
        "the weights (Q8_0 weights are at 45 dB, the embedding at ~22 dB): T5 attention does not scale its",
        "scores by 1/sqrt(d), so random 256-wide q/k weights give saturated softmaxes that amplify weight",
        "noise (Gemma-2, which scales its scores, loses less at every recipe). Trained encoders are better",
        "conditioned; treat these rows as an ordering of recipes and a check that the GGUF -> loader ->",
        "forward path works for T5, UMT5 and Gemma-2, not as UMT5-XXL's fidelity.",
        "fp8 (e4m3: 3 mantissa bits) lands between Q6_K and Q5_K_M on T5/UMT5 and near Q6_K on Gemma-2;",
        "per-tensor (ComfyUI) and per-channel (compressed-tensors) fp8 scales differ by less than the",
        "prompt-to-prompt spread. int8 per channel matches Q8_0 (blocks of 32) at ~8% more bytes (float32",
        "scales per row, the float embedding kept as stored).",
        "Latent and frame metrics through the Wan pipeline with a quantized encoder: next section.",
    ]
    text = "\n".join(lines) + "\n"
    old = Path(args.out).read_text() if Path(args.out).is_file() else ""
    if KEEP[0] in old:  # the end-to-end section another bench writes
        text += "\n" + old[old.index(KEEP[0]) : old.index(KEEP[1]) + len(KEEP[1])] + "\n"
    Path(args.out).write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
