"""What a quantized text encoder costs in the final video: `verify` with GGUF, fp8 and int8 text-encoder candidates.

Builds the tiny Wan 2.1 pipeline (wide random transformer, contrasty VAE) with the tiny wide random
UMT5 (d_model 256, so every K-type applies; transformer text_dim set to match) and a locally trained
SentencePiece tokenizer, writes Q8_0 and Q4_K_M GGUFs, ComfyUI's scaled fp8 file and fp8 / int8
compressed-tensors folders of the encoder with `weightsmith quantize`, and runs
`weightsmith.api.verify` on 5 text prompts x 2 seeds: prompt-embedding SQNR/cosine, then the latent
and frame metrics of the same transformer driven by those embeddings. Writes the section between
the markers in reports/text_encoders.md.

    PYTHONPATH=. .venv/bin/python bench/bench_verify_text_encoder.py
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "quantize"))

from benchlib import PROMPTS  # noqa: E402

# row label -> (file name, quantize keywords)
RECIPES = {
    "Q8_0": ("umt5-Q8_0.gguf", {"scheme": "gguf:Q8_0"}),
    "Q4_K_M": ("umt5-Q4_K_M.gguf", {"scheme": "gguf:Q4_K_M"}),
    "fp8 scaled (ComfyUI)": ("umt5-fp8-scaled.safetensors", {"scheme": "fp8", "format": "comfy-legacy"}),
    "fp8 (compressed-tensors)": ("umt5-fp8", {"scheme": "fp8"}),
    "int8 (compressed-tensors)": ("umt5-int8", {"scheme": "int8"}),
}
START, END = "<!-- verify-text-encoder:start -->", "<!-- verify-text-encoder:end -->"
METRICS = ["prompt_cosine", "prompt_sqnr", "latent_cosine", "latent_sqnr", "psnr", "ssim"]


def pipeline(root: Path) -> Path:
    from diffusers import WanTransformer3DModel
    from textenc_kit import t5_folder
    from transformers import T5Tokenizer

    from weightsmith.verify.tiny import save_tiny_pipeline
    from weightsmith.verify.tiny import signal_preserving_ as init

    pipe = save_tiny_pipeline(root / "pipe", "wan", "2.1-t2v")
    te = t5_folder(pipe / "text_encoder", "wan", wide=True)
    spm = te / "spiece.model"
    tok = pipe / "tokenizer"
    T5Tokenizer(vocab_file=str(spm), extra_ids=0, legacy=False).save_pretrained(tok)
    (tok / "spiece.model").write_bytes(spm.read_bytes())
    spm.unlink()
    d_model = json.loads((te / "config.json").read_text())["d_model"]
    cfg = json.loads((pipe / "transformer" / "config.json").read_text())
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["text_dim"] = d_model
    model = init(WanTransformer3DModel.from_config(cfg), 0)
    model.save_pretrained(str(pipe / "transformer"))
    index = json.loads((pipe / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "UMT5EncoderModel"]
    index["tokenizer"] = ["transformers", "T5Tokenizer"]
    (pipe / "model_index.json").write_text(json.dumps(index))
    return pipe


def fmt(v: float | None) -> str:
    return "-" if v is None else ("inf" if v == float("inf") else f"{v:.4f}" if abs(v) < 2 else f"{v:.1f}")


def main() -> None:
    from weightsmith.api import quantize, verify

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pipe = pipeline(root)
        prompts = root / "prompts.txt"
        prompts.write_text("\n".join(PROMPTS) + "\n")
        cands = []
        for name, kw in RECIPES.values():
            out = root / name
            quantize(str(pipe / "text_encoder"), str(out), **kw)
            cands.append(str(out))
        res = verify(
            str(pipe),
            cands,
            no_cache=True,
            prompts=str(prompts),
            seeds="0,1",
            steps=4,
            height=64,
            width=64,
            frames=5,
        )
    rows = [
        "| text encoder | size ratio | " + " | ".join(f"median {m} (worst)" for m in METRICS) + " |",
        "|---|---|" + "---|" * len(METRICS),
    ]
    label_of = {name: label for label, (name, _) in RECIPES.items()}
    for c in res._internal.candidates:
        cells = []
        for m in METRICS:
            vals = [it.metrics.get(m) for it in c.items if it.metrics.get(m) is not None]
            med = statistics.median(vals) if vals else None
            cells.append(f"{fmt(med)} ({fmt(c.worst.get(m))})")
        rows.append(
            f"| {label_of.get(Path(c.label).name, c.label)} | {c.size_ratio:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    section = "\n".join(
        [
            START,
            "## End to end: `verify` with GGUF, fp8 and int8 text-encoder candidates (tiny Wan 2.1 pipeline)",
            "",
            "`bench/bench_verify_text_encoder.py`: tiny Wan 2.1 T2V pipeline (wide random transformer,",
            "text_dim 256; contrasty VAE) with the wide random UMT5 above and its SentencePiece tokenizer;",
            "`weightsmith verify PIPE CANDIDATE --prompts prompts.txt` (GGUFs, ComfyUI's scaled fp8 file,",
            "fp8/int8 compressed-tensors folders), 5 prompts x 2 seeds, 4 steps,",
            "64x64, 5 frames, fp32 on CPU. Medians over the 10 items, worst in brackets. The transformer",
            "and VAE are the baseline's own; only the prompt embeddings differ. The prompt metrics are over",
            "the pipeline's embeddings (Wan masks the prompt and zeroes the padding positions, so those add",
            "neither signal nor noise) and come out higher than the unmasked last_hidden_state rows above.",
            "",
            *rows,
            "",
            "Reading it: int8 and Q8_0 encoders leave the video at ~40 dB latent SQNR (~33-34 dB PSNR); fp8",
            "(scaled or per channel) costs ~10 dB more (latent ~29-30 dB, PSNR ~27-28 dB), still well above",
            "Q4_K_M. Same caveat as above: random weights rank the formats, trained XXL numbers need the weights.",
            END,
        ]
    )
    report = ROOT / "reports" / "text_encoders.md"
    text = report.read_text()
    if START in text:
        text = text[: text.index(START)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    report.write_text(text)
    print(section)


if __name__ == "__main__":
    main()
