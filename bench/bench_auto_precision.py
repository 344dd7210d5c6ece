"""Evidence for ``quantize --scheme auto:FORMAT`` on the tiny families (wide fixtures).

Per family (Wan, Sana, CogVideoX: their tiny wide pipelines, several seeds) and per format
family (GGUF, compressed-tensors):

1. one ``verify`` run of a uniform recipe with a cold baseline cache: the unit of cost;
2. ``auto`` with ``--target`` on a cold cache: its wall time as a multiple of (1);
3. an independent ``verify`` of the auto artifact and of every uniform recipe under the same
   target: the auto file must pass and be smaller than every uniform recipe that passes;
4. ``auto`` with ``--max-size`` = a uniform recipe's predicted size (Q4_K_M for GGUF, int4 for
   compressed-tensors), verified: its fidelity against that recipe's;
5. ``auto`` again on the same inputs: the same assignment and the same bytes.

Writes reports/auto_precision.md and .json. Usage:

    .venv/bin/python bench/bench_auto_precision.py [--families wan,sana,cogvideox] [--target 'psnr>=32']
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIES = 10  # --max-tries of every auto run here (two thirds aimed, the rest refinement)
FORMATS = {
    "gguf": ("gguf:Q4_K_M", ".gguf"),
    "compressed-tensors": ("int4", ""),
}


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _size(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def _uniform(fmt: str) -> list[str]:
    if fmt == "gguf":
        from weightsmith.quantize.gguf.recipes import RECIPES

        return [f"gguf:{n}" for n, r in RECIPES.items() if not r.float_recipe or n == "F16"]
    from weightsmith.auto.formats import CompressedTensorsAuto

    return list(CompressedTensorsAuto.SCHEMES)


def _write_uniform(src: Path, dst: Path, scheme: str) -> None:
    from weightsmith.quantize.schemes import find_scheme

    kw = {} if scheme.startswith("gguf:") else {"format": "compressed-tensors"}
    find_scheme(scheme).run(str(src), str(dst), scheme, progress=False, device="cpu", report=False, **kw)


def run_family(
    family: str, fmt: str, target: str, work: Path, seeds: tuple[int, ...], steps: int, determinism: bool
) -> dict:
    from weightsmith.auto.report import to_json
    from weightsmith.auto.search import AutoOptions, run_auto
    from weightsmith.verify import VerifyOptions, parse_gate, verify
    from weightsmith.verify.settings import GenerationSettings
    from weightsmith.verify.tiny import TINY_SIZE, TINY_VARIANTS, save_tiny_pipeline

    variant = TINY_VARIANTS[family][0]
    pipe = work / "pipe"
    if not pipe.exists():
        save_tiny_pipeline(pipe, family, variant)
    h, w, f = TINY_SIZE[family]
    settings = GenerationSettings(
        height=h, width=w, frames=f, steps=steps, text_len=8, seeds=seeds, device="cpu"
    )
    gate = parse_gate(target)
    ref_scheme, suffix = FORMATS[fmt]
    out = work / fmt
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()

    def vopts(cands: list[Path], cache: Path, gates: list) -> VerifyOptions:
        return VerifyOptions(
            str(pipe),
            [str(c) for c in cands],
            settings,
            gates=gates,
            cache_dir=cache,
            consumers="weightsmith",
            progress=False,
        )

    def auto(dst: Path, gates: list, max_size) -> object:
        """``auto:{fmt}`` into ``dst`` on the CPU, sharing one cache across the runs."""
        return run_auto(
            AutoOptions(
                str(pipe),
                str(dst),
                f"auto:{fmt}",
                gates,
                max_size,
                settings,
                device="cpu",
                cache_dir=out / "cache-auto",
                progress=False,
                max_tries=TRIES,
            )
        )

    # 1. one verify run, cold baseline cache
    ref = out / f"uniform-{ref_scheme.replace(':', '-')}{suffix}"
    _write_uniform(pipe / "transformer", ref, ref_scheme)
    t0 = time.perf_counter()
    verify(vopts([ref], out / "cache-verify", [gate]))
    t_verify = time.perf_counter() - t0

    # 2. auto with the target, cold caches
    dst = out / f"auto{suffix}"
    t0 = time.perf_counter()
    res = auto(dst, [gate], None)
    t_auto = time.perf_counter() - t0
    auto_json = to_json(res)

    # 3. independent verify: the auto file and every uniform recipe
    cands = [dst] if res.final else []
    names = {}
    for s in _uniform(fmt):
        p = out / f"uniform-{s.replace(':', '-')}{suffix}"
        if not p.exists():
            _write_uniform(pipe / "transformer", p, s)
        cands.append(p)
        names[str(p)] = s
    vr = verify(vopts(cands, out / "cache-verify", [gate]))
    rows = []
    for c in vr.candidates:
        path = next(iter(c.paths.values()))
        rows.append(
            {
                "label": "auto" if path == str(dst) else names.get(path, path),
                "bytes": _size(Path(path)),
                "passed": c.passed,
                "psnr": c.worst.get("psnr"),
                "latent_sqnr": c.worst.get("latent_sqnr"),
                "ssim": c.worst.get("ssim"),
            }
        )
    auto_row = next((r for r in rows if r["label"] == "auto"), None)
    passing = [r for r in rows if r["label"] != "auto" and r["passed"]]
    smallest = min(passing, key=lambda r: r["bytes"]) if passing else None

    # 4. auto at the reference recipe's predicted size
    ref_pred = res.uniform.get(ref_scheme) or res.uniform.get(ref_scheme.split(":")[-1])
    sized = out / f"auto-sized{suffix}"
    rs = auto(sized, [], ref_pred[0])
    vs = verify(vopts([sized, ref], out / "cache-verify", []))
    at_size = {
        "max_size": ref_pred[0],
        "auto": {
            "bytes": _size(sized),
            **{k: vs.candidates[0].worst.get(k) for k in ("psnr", "latent_sqnr", "ssim")},
        },
        ref_scheme: {
            "bytes": _size(ref),
            **{k: vs.candidates[1].worst.get(k) for k in ("psnr", "latent_sqnr", "ssim")},
        },
        "types": _counts(rs.choice),
    }

    # 5. determinism (GGUF): the same inputs again
    det = None
    if determinism and res.final:
        again = out / f"auto-again{suffix}"
        r2 = auto(again, [gate], None)
        det = {
            "same_assignment": r2.choice == res.choice,
            "same_bytes": _sha(again) == _sha(dst),
            "rerun_seconds": r2.timing["total_seconds"],
        }
    return {
        "family": family,
        "variant": variant,
        "format": fmt,
        "target": target,
        "verify_seconds": t_verify,
        "auto_seconds": t_auto,
        "multiple_of_verify": t_auto / t_verify,
        "auto": auto_json,
        "types": _counts(res.choice),
        "verified": rows,
        "auto_row": auto_row,
        "smallest_passing_uniform": smallest,
        "auto_smaller": bool(
            auto_row and auto_row["passed"] and (smallest is None or auto_row["bytes"] < smallest["bytes"])
        ),
        "at_size": at_size,
        "determinism": det,
    }


def _counts(choice: dict) -> str:
    c: dict[str, int] = {}
    for t in choice.values():
        c[t] = c.get(t, 0) + 1
    return ", ".join(f"{n}x{t}" for t, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "# auto precision: fidelity-budgeted mixed precision on the tiny families",
        "",
        f"`bench/bench_auto_precision.py` on {platform.machine()} ({os.cpu_count()} CPUs, shared), target `{args.target}`, "
        f"seeds {args.seeds}, {args.steps} steps, tiny wide pipelines (real diffusers classes, random signal-preserving weights), "
        f"verify's weightsmith loader, `--max-tries {TRIES}`. Sizes are bytes on disk.",
        "",
        "## Summary",
        "",
        "| family | format | auto bytes | auto passes (independent verify) | smallest passing uniform | auto smaller | at reference size: auto vs reference (psnr / latent SQNR dB) | search / one verify | deterministic |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        a, s, z = r["auto_row"], r["smallest_passing_uniform"], r["at_size"]
        ref = [k for k in z if k not in ("max_size", "auto", "types")][0]
        det = r["determinism"]
        lines.append(
            f"| {r['family']} {r['variant']} | {r['format']} | {a['bytes'] if a else '-'} | {a['passed'] if a else 'no file'} "
            f"({'psnr ' + _f(a['psnr']) if a else ''}) | {s['label'] + ' ' + str(s['bytes']) if s else 'none'} | {r['auto_smaller']} | "
            f"{_f(z['auto']['psnr'])} / {_f(z['auto']['latent_sqnr'])} vs {ref} {_f(z[ref]['psnr'])} / {_f(z[ref]['latent_sqnr'])} | "
            f"{r['auto_seconds']:.0f} s / {r['verify_seconds']:.0f} s = {r['multiple_of_verify']:.1f}x | "
            f"{'-' if det is None else (det['same_assignment'] and det['same_bytes'])} |"
        )
    for r in results:
        aj = r["auto"]
        lines += [
            "",
            f"## {r['family']} {r['variant']}, auto:{r['format']}",
            "",
            f"Chosen: {r['types']}. Additivity (every chosen layer quantized at once vs the sum of each alone, output SQNR on the probes): "
            f"predicted {aj['additivity']['predicted_db']} dB, measured {aj['additivity']['measured_db']} dB.",
            "",
            "Tries: "
            + "; ".join(
                (f"aim {t['aim_db']} dB" if t.get("phase", "aimed") == "aimed" else t["phase"])
                + f" -> predicted {t['predicted_db']} dB, {t['bytes']} B, psnr {_f(t['metrics'].get('psnr'))}: {'pass' if t['passed'] else 'fail'}"
                for t in aj["attempts"]
            ),
            "",
            f"At the reference size ({r['at_size']['max_size']} B predicted): auto chose {r['at_size']['types']}.",
            "",
            "| artifact | bytes | passes | psnr | latent SQNR | ssim | predicted output SQNR (probes) |",
            "|---|---|---|---|---|---|---|",
        ]
        for v in sorted(r["verified"], key=lambda v: v["bytes"]):
            pred = (
                aj["uniform"].get(v["label"], {}).get("predicted_db")
                if v["label"] != "auto"
                else aj["predicted_output_sqnr_db"]
            )
            lines.append(
                f"| {v['label']} | {v['bytes']} | {v['passed']} | {_f(v['psnr'])} | {_f(v['latent_sqnr'])} | {_f(v['ssim'])} | {pred} |"
            )
    lines += [
        "",
        "Search cost: wall time of the whole `auto` run on cold caches (reference generations for the probes, per-layer costs, "
        "every write and verify of the tries) over one `verify` run of one candidate on a cold baseline cache, same settings.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default="wan,sana,cogvideox")
    ap.add_argument("--formats", default="gguf,compressed-tensors")
    ap.add_argument("--target", default="psnr>=32")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument(
        "--determinism",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run auto again and compare",
    )
    ap.add_argument("--out", default=str(ROOT / "reports" / "auto_precision.md"))
    ap.add_argument("--merge", nargs="*", help="only render --out from these .json results")
    args = ap.parse_args()
    if args.merge:
        results = [r for f in args.merge for r in json.loads(Path(f).read_text())]
        Path(args.out).write_text(markdown(results, args))
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        return
    import torch

    torch.set_num_threads(1)  # tiny models: one thread is faster, much faster on a busy machine
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in args.families.split(","):
            for fmt in args.formats.split(","):
                t0 = time.perf_counter()
                det = args.determinism
                r = run_family(fam, fmt, args.target, Path(tmp) / fam, seeds, args.steps, det)
                results.append(r)
                print(
                    f"{fam} {fmt}: {time.perf_counter() - t0:.0f} s, auto smaller: {r['auto_smaller']}",
                    flush=True,
                )
                Path(args.out).write_text(markdown(results, args))
                Path(args.out).with_suffix(".json").write_text(
                    json.dumps(results, indent=1, default=str) + "\n"
                )


if __name__ == "__main__":
    main()
