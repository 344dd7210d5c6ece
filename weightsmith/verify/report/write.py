"""Write report.json, report.md and report.html for one verification run or a matrix of them."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import weightsmith.verify.report.svg as svg
from weightsmith.io.atomic import atomic_file
from weightsmith.verify.gates import format_value
from weightsmith.verify.report.media import DIFF_GAIN, animation_gif, data_uri, strip_png

MATRIX_SCHEMA = "weightsmith.verify-matrix/1"


def check_report_dir(report: str | Path | None) -> None:
    """``report`` names a folder to write into: refuse a file there now, not after the generations."""
    if report is None:
        return
    from weightsmith.errors import OutputError

    p = Path(report)
    if p.exists() and not p.is_dir():
        raise OutputError(
            f"--report {p} is a file; a folder is expected", hint="pass a new or existing folder"
        )
    parent = p.parent if not p.exists() else p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(
            f"--report {p} cannot be created: {parent} is not a folder", hint="pass a folder path"
        )


def _columns(run: Any) -> list[str]:
    cols = ["latent_sqnr", "latent_cosine", "step_sqnr_min"]
    cols += ["psnr", "psnr_frame_min", "ssim", "flicker"] if run.frames else ["latent_psnr", "latent_max_abs"]
    if any("lpips" in c.worst for c in run.candidates):
        cols.append("lpips")
    cols += [m for m in ("prompt_sqnr", "prompt_cosine") if any(m in c.worst for c in run.candidates)]
    return cols + ["size_ratio", "time_ratio"]


def _status(c: Any) -> str:
    if not c.passed:
        return "FAIL"
    return "exact" if c.exact else "pass"


def fidelity_metric(run: Any) -> str:
    """The metric fidelity-against-size plots use: frame PSNR when frames exist, else latent SQNR."""
    return "psnr" if run.frames else "latent_sqnr"


def write_report(
    folder: str | Path,
    runs: Sequence[Any],
    title: str = "weightsmith verify",
    headline: str | None = None,
) -> Path:
    """Write the three report files into ``folder`` (created); returns the HTML path.

    ``headline`` replaces the PASS/FAIL verdict line where the gates are an illustration, not a
    check of the run (the demo: tiny random models fail gates meant for real ones by design)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(runs) == 1:
        body: dict[str, Any] = runs[0].to_json()
    else:
        body = {
            "schema": MATRIX_SCHEMA,
            "passed": all(r.passed for r in runs),
            "runs": [r.to_json() for r in runs],
        }
    with atomic_file(folder / "report.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(body, indent=1, sort_keys=False) + "\n")
    with atomic_file(folder / "report.md", overwrite=True) as tmp:
        tmp.write_text(markdown(runs, title, headline))
    html_path = folder / "report.html"
    with atomic_file(html_path, overwrite=True) as tmp:
        tmp.write_text(html(runs, title, headline))
    return html_path


# --------------------------------------------------------------------------------------------- markdown
def markdown(runs: Sequence[Any], title: str, headline: str | None = None) -> str:
    lines = [f"# {title}", ""]
    ok = all(r.passed for r in runs)
    if headline:
        lines += [headline, ""]
    else:
        lines += [f"**Result: {'PASS' if ok else 'FAIL'}**: {_pass_count(runs)}", ""]
    if len(runs) > 1:
        lines += ["## Fidelity against size", "", *fidelity_table(runs), ""]
    for run in runs:
        b = run.baseline
        lines += [f"## {b['family']} {b['variant']}: {b['label']}", ""]
        s = run.settings
        lines.append(
            f"{s['height']}x{s['width']}, {s['frames']} frame(s), {s['steps']} steps, guidance {s['guidance']}, "
            f"scheduler {run.scheduler['name']} ({run.scheduler['class']}), seeds {s['seeds']}, {s['dtype']} on "
            f"{s['device']}; {run.world_size} process(es)."
        )
        lines.append("")
        cols = _columns(run)
        lines.append("| candidate | " + " | ".join(cols) + " | result |")
        lines.append("|---|" + "---:|" * len(cols) + "---|")
        for c in run.candidates:
            vals = " | ".join(format_value(c.worst.get(k)) for k in cols)
            lines.append(f"| {c.label} | {vals} | {_status(c)} |")
        lines.append("")
        lines.append("Values are the worst over all prompts and seeds (lowest PSNR, highest flicker...).")
        if run.gates:
            lines.append("Gates: " + ", ".join(f"`{g.text}`" for g in run.gates) + ".")
        bad = [g for g in run.gate_results() if not g.passed]
        if bad:
            lines += ["", "Failed:", "", "| candidate | gate | value |", "|---|---|---|"]
            lines += [f"| {g.candidate} | {g.check} | {g.value} |" for g in bad]
        if run.notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in run.notes]
        lines.append("")
    return "\n".join(lines) + "\n"


def fidelity_table(runs: Sequence[Any]) -> list[str]:
    out = [
        "| model | candidate | size ratio | latent SQNR dB | PSNR dB | SSIM | result |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        b = run.baseline
        for c in run.candidates:
            out.append(
                f"| {b['family']} {b['variant']} | {c.label} | {format_value(c.size_ratio)} | "
                f"{format_value(c.worst.get('latent_sqnr'))} | {format_value(c.worst.get('psnr'))} | "
                f"{format_value(c.worst.get('ssim'))} | {_status(c)} |"
            )
    return out


# ------------------------------------------------------------------------------------------------- html
_CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1240px;color:#222;padding:0 16px}
h1{margin-bottom:4px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px}
table{border-collapse:collapse;margin:10px 0;font-size:13px} td,th{border:1px solid #ddd;padding:4px 8px}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1a7f37;font-weight:bold} .fail{color:#cf222e;font-weight:bold} .exact{color:#0969da;font-weight:bold}
.badge{display:inline-block;padding:4px 12px;border-radius:12px;color:#fff;font-weight:bold}
.badge.ok{background:#1a7f37} .badge.bad{background:#cf222e} .badge.info{background:#0969da}
.charts{display:flex;flex-wrap:wrap;gap:12px} .note{color:#555;font-size:13px}
figure{margin:12px 0} figcaption{font-size:12px;color:#555} img.px{image-rendering:pixelated}
"""

# Marks the page as rendered once every picture has decoded (the Chromium test reads it).
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken', String(broken));
  document.body.setAttribute('data-ready', 'yes');
});
"""


def _cell(v: float | None) -> str:
    return f'<td class="num">{escape(format_value(v))}</td>'


def html(runs: Sequence[Any], title: str, headline: str | None = None) -> str:
    ok = all(r.passed for r in runs)
    verdict = (
        f'<p><span class="badge info">demo</span> {escape(headline)}</p>'
        if headline
        else f'<p><span class="badge {"ok" if ok else "bad"}">{"PASS" if ok else "FAIL"}</span> '
        f"{_pass_count(runs)}</p>"
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        verdict,
    ]
    if len(runs) > 1:
        parts.append("<h2>Fidelity against size</h2>")
        parts.append(_fidelity_plots(runs))
        parts.append(_md_table_html(fidelity_table(runs)))
    for i, run in enumerate(runs):
        parts.append(_run_html(run, i, single=len(runs) == 1))
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def _pass_count(runs: Sequence[Any]) -> str:
    cands = [c for r in runs for c in r.candidates]
    passed = sum(1 for c in cands if c.passed)
    exact = sum(1 for c in cands if c.passed and c.exact)
    return f"{passed} of {len(cands)} candidates pass every gate and check ({exact} exactly equal to the baseline)."


def _md_table_html(lines: list[str]) -> str:
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if not ln.startswith("|---")]
    head, body = rows[0], rows[1:]
    out = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    for r in body:
        cls = {"FAIL": "fail", "pass": "pass", "exact": "exact"}
        cells = "".join(
            f'<td class="{cls.get(c, "num" if j > 1 else "")}">{escape(c)}</td>' for j, c in enumerate(r)
        )
        out.append(f"<tr>{cells}</tr>")
    return "".join(out) + "</table>"


def _fidelity_plots(runs: Sequence[Any]) -> str:
    charts = []
    for metric, label in (("latent_sqnr", "final-latent SQNR (dB)"), ("psnr", "frame PSNR (dB)")):
        pts = []
        for ri, run in enumerate(runs):
            for c in run.candidates:
                v = c.worst.get(metric)
                if c.loader != "weightsmith":  # the diffusers-loader twin sits on the same spot
                    continue
                if v is not None and c.size_ratio is not None and math.isfinite(c.size_ratio):
                    pts.append((short_label(c.label, run.baseline["family"]), c.size_ratio, v, ri))
        names = [f"{r.baseline['family']} {r.baseline['variant']}" for r in runs]
        if pts:
            charts.append(
                svg.scatter(pts, f"{label} against size", "size / baseline size", label, legend=names)
            )
    legend = ", ".join(
        f'<span style="color:{svg.color(i)}">&#9679; {escape(r.baseline["family"])} {escape(r.baseline["variant"])}</span>'
        for i, r in enumerate(runs)
    )
    return f'<div class="charts">{"".join(charts)}</div><p class="note">{legend}</p>'


def short_label(label: str, family: str) -> str:
    """``wan-Q4_K_M.gguf`` -> ``Q4_K_M``: plot labels without what the legend already says."""
    label = label.removeprefix(f"{family}-")
    for suffix in (".gguf", ".safetensors"):
        label = label.removesuffix(suffix)
    return label


def _run_html(run: Any, index: int, single: bool) -> str:
    b, s = run.baseline, run.settings
    out = [f"<h2>{escape(b['family'])} {escape(b['variant'])}: {escape(str(b['label']))}</h2>"]
    out.append(
        f'<p class="note">{s["height"]}x{s["width"]}, {s["frames"]} frame(s), {s["steps"]} steps, guidance '
        f"{s['guidance']}, scheduler {escape(run.scheduler['name'])} ({escape(run.scheduler['class'])}), seeds "
        f"{escape(str(s['seeds']))}, {escape(s['dtype'])} on {escape(s['device'])}, {run.world_size} process(es); "
        f"values are the worst over prompts and seeds.</p>"
    )
    cols = _columns(run)
    out.append(
        "<table><tr><th>candidate</th><th>loader</th>"
        + "".join(f"<th>{c}</th>" for c in cols)
        + "<th>result</th></tr>"
    )
    for c in run.candidates:
        st = _status(c)
        out.append(
            f"<tr><td>{escape(c.label)}</td><td>{escape(c.loader)}</td>"
            + "".join(_cell(c.worst.get(k)) for k in cols)
            + f'<td class="{st.lower()}">{st}</td></tr>'
        )
    out.append("</table>")
    bad = [g for g in run.gate_results() if not g.passed]
    if run.gates or bad:
        out.append("<p>Gates: " + ", ".join(f"<code>{escape(g.text)}</code>" for g in run.gates) + "</p>")
    if bad:
        out.append("<table><tr><th>candidate</th><th>failed gate</th><th>value</th></tr>")
        out += [
            f'<tr><td>{escape(g.candidate)}</td><td class="fail">{escape(g.check)}</td><td>{escape(g.value)}</td></tr>'
            for g in bad
        ]
        out.append("</table>")
    if run.notes:
        out.append("<ul>" + "".join(f'<li class="note">{escape(n)}</li>' for n in run.notes) + "</ul>")
    charts = [
        _step_chart(run, "sqnr", "latent SQNR per step (dB)"),
        _step_chart(run, "cosine", "latent cosine per step"),
    ]
    if run.frames:
        charts += [
            _frame_chart(run, "psnr", "PSNR per frame (dB)"),
            _frame_chart(run, "ssim", "SSIM per frame"),
        ]
    if single:
        pts = [
            (c.label, c.size_ratio, c.worst.get(fidelity_metric(run)), i)
            for i, c in enumerate(run.candidates)
        ]
        charts.append(svg.scatter(pts, "fidelity against size", "size / baseline size", fidelity_metric(run)))
    out.append('<div class="charts">' + "".join(ch for ch in charts if ch) + "</div>")
    out.append(_pictures(run))
    return "\n".join(out)


def _first_item(c: Any) -> Any:
    return min(c.items, key=lambda it: (it.seed, it.prompt)) if c.items else None


def _step_chart(run: Any, key: str, title: str) -> str:
    series = []
    for c in run.candidates:
        it = _first_item(c)
        if it is None:
            continue
        ys = it.step_sqnr if key == "sqnr" else it.step_cosine
        series.append((c.label, list(range(1, len(ys) + 1)), ys))
    return svg.line_chart(series, title, "denoising step", key) if series else ""


def _frame_chart(run: Any, key: str, title: str) -> str:
    series = []
    for c in run.candidates:
        it = _first_item(c)
        if it is None:
            continue
        ys = it.frame_psnr if key == "psnr" else it.frame_ssim
        series.append((c.label, list(range(len(ys))), ys))
    return svg.line_chart(series, title, "frame", key) if any(s[2] for s in series) else ""


def _pictures(run: Any) -> str:
    base = run.baseline_preview
    if base is None:
        return ""
    what = "frames" if run.frames else "latents (first three channels, scaled by the baseline's range)"
    out = [f"<h3>Baseline | candidate | difference &times;{DIFF_GAIN:g} ({what}, first seed)</h3>"]
    for c in run.candidates:
        if c.preview is None:
            continue
        strip = data_uri(strip_png(base, c.preview), "image/png")
        anim = data_uri(animation_gif(base, c.preview), "image/gif")
        out.append(
            f"<figure><figcaption>{escape(c.label)}: rows baseline, candidate, |difference| &times;{DIFF_GAIN:g}"
            f'</figcaption><img class="px" src="{strip}" alt="frames of {escape(c.label)}"></figure>'
            f"<figure><figcaption>{escape(c.label)}: baseline (left) and candidate (right), animated</figcaption>"
            f'<img class="px" src="{anim}" alt="animation of {escape(c.label)}"></figure>'
        )
    return "\n".join(out)
