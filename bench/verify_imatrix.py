"""Does an importance matrix collected from reference generations improve GGUF K-quants?

For each family's tiny verification pipeline (real diffusers classes, Linear rows of 256 so every
K-type applies): collect an imatrix from reference generations on calibration seeds, quantize the
transformer to Q4_K_M, Q3_K_M and Q2_K with and without it, and verify every GGUF against the
full-precision baseline on *other* seeds (so the matrix is not scored on what it was fitted to).
Records whether the files differ and the fidelity (final-latent SQNR, frame PSNR/SSIM, mean over
the evaluation seeds) in reports/imatrix.md. Usage:

    .venv/bin/python bench/verify_imatrix.py [--out reports/imatrix.md] [--steps 4]
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

RECIPES = ("Q4_K_M", "Q3_K_M", "Q2_K")
CALIBRATION = tuple(range(100, 108))
EVALUATION = tuple(range(0, 8))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()[:12]


def layer_sqnr(gguf: Path, inputs: dict, base: torch.nn.Module) -> float:
    """Mean over quantized Linear layers of the output SQNR (dB) on real activations: what an imatrix optimises."""
    import torch.nn.functional as F

    from weightsmith.load import load_gguf_model
    from weightsmith.quantize.gguf.loader import GGMLLinear
    from weightsmith.verify.metrics import sqnr

    model = load_gguf_model(gguf)
    ref = dict(base.named_modules())
    vals = []
    for name, mod in model.named_modules():
        if isinstance(mod, GGMLLinear) and f"{name}.weight" in inputs:
            x = inputs[f"{name}.weight"]
            vals.append(sqnr(F.linear(x, ref[name].weight.float()), F.linear(x, mod.dequantized_weight())))
    return sum(vals) / len(vals)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "reports" / "imatrix.md"))
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from weightsmith.quantize.gguf.imatrix import read_imatrix
    from weightsmith.quantize.gguf.run import quantize_gguf
    from weightsmith.verify import GenerationSettings, VerifyOptions, verify
    from weightsmith.verify.family import demo_models
    from weightsmith.verify.importance import collect_imatrix, linear_inputs
    from weightsmith.verify.tiny import TINY_SIZE, save_tiny_pipeline

    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ws-imatrix-") as tmp:
        root = Path(tmp)
        for family, variant in demo_models():
            h, w, f = TINY_SIZE[family]
            pipe = save_tiny_pipeline(root / f"{family}-pipe", family, variant)
            cal = GenerationSettings(
                height=h, width=w, frames=f, steps=args.steps, text_len=8, seeds=CALIBRATION
            )
            im = collect_imatrix(str(pipe), root / f"{family}.imatrix.gguf", cal, progress=False)
            n_im = len(read_imatrix(im.path))
            cands = []
            for recipe in RECIPES:
                plain = quantize_gguf(
                    pipe, root / f"{family}-{recipe}.gguf", f"gguf:{recipe}", progress=False, report=False
                )
                withim = quantize_gguf(
                    pipe,
                    root / f"{family}-{recipe}-imatrix.gguf",
                    f"gguf:{recipe}",
                    imatrix=im.path,
                    progress=False,
                    report=False,
                )
                used = sum(1 for r in withim.layers if r.imatrix)
                cands.append((recipe, plain.dst, withim.dst, used))
            ev = GenerationSettings(
                height=h, width=w, frames=f, steps=args.steps, text_len=8, seeds=EVALUATION
            )
            inputs, base_tr = linear_inputs(str(pipe), ev)
            paths = [str(p) for _, a, b, _ in cands for p in (a, b)]
            res = verify(
                VerifyOptions(
                    str(pipe), paths, ev, cache_dir=root / "cache", consumers="weightsmith", progress=False
                )
            )
            by = {c.label: c for c in res.candidates}
            for recipe, a, b, used in cands:
                ca, cb = by[a.name], by[b.name]
                rows.append(
                    {
                        "model": f"{family} {variant}",
                        "recipe": recipe,
                        "differs": _sha(a) != _sha(b),
                        "tensors": f"{used}/{n_im}",
                        "sqnr": (ca.mean["latent_sqnr"], cb.mean["latent_sqnr"]),
                        "psnr": (ca.mean["psnr"], cb.mean["psnr"]),
                        "ssim": (ca.mean["ssim"], cb.mean["ssim"]),
                        "layer": (layer_sqnr(a, inputs, base_tr), layer_sqnr(b, inputs, base_tr)),
                    }
                )
    seconds = time.perf_counter() - t0
    lines = [
        "# Importance matrices from reference generations: effect on GGUF K-quants",
        "",
        "Written by `bench/verify_imatrix.py` on the tiny verification pipelines (`weightsmith/verify/tiny.py`: the",
        "real diffusers classes with Linear rows of 256 and signal-preserving random weights). The importance matrix",
        f"comes from `weightsmith imatrix` over calibration seeds {CALIBRATION[0]}-{CALIBRATION[-1]}; every GGUF is verified",
        f"against the float baseline on evaluation seeds {EVALUATION[0]}-{EVALUATION[-1]} (other seeds, other prompt embeddings),",
        f"{args.steps} denoising steps, 32x32, frames decoded by the tiny VAE. Values are means over the evaluation seeds;",
        "'imatrix' columns quantize with `--imatrix`. 'files differ' compares the GGUF bytes. 'layer SQNR' is what the",
        "importance matrix optimises: each quantized Linear's output error on the activations it receives in the",
        "evaluation generations (dB, mean over layers); the other columns are end to end.",
        "",
        "| model | recipe | files differ | tensors using it | layer SQNR dB | with imatrix | latent SQNR dB | with imatrix | PSNR dB | with imatrix | SSIM | with imatrix |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gains, lgains, pgains = [], [], []
    for r in rows:
        gains.append(r["sqnr"][1] - r["sqnr"][0])
        lgains.append(r["layer"][1] - r["layer"][0])
        pgains.append(r["psnr"][1] - r["psnr"][0])
        lines.append(
            f"| {r['model']} | {r['recipe']} | {'yes' if r['differs'] else 'NO'} | {r['tensors']} | {r['layer'][0]:.2f} | "
            f"{r['layer'][1]:.2f} | {r['sqnr'][0]:.2f} | {r['sqnr'][1]:.2f} | {r['psnr'][0]:.2f} | {r['psnr'][1]:.2f} | "
            f"{r['ssim'][0]:.4f} | {r['ssim'][1]:.4f} |"
        )

    def count(g: list[float]) -> str:
        return f"{sum(1 for x in g if x > 0)} of {len(g)} cases (mean {sum(g) / len(g):+.2f} dB)"

    lines += [
        "",
        f"With the importance matrix, layer SQNR rose in {count(lgains)}, final-latent SQNR in {count(gains)},",
        f"frame PSNR in {count(pgains)}.",
        "",
        f"Machine: {platform.machine()}, {platform.python_version()}, torch {torch.__version__}, 1 thread; {seconds:.0f} s in all.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
