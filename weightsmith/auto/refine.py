"""Verified refinement after the aimed search: uniform seeds, then layer downgrades.

The aimed search (``search``) trusts the cost model's ranking of mixes, and near a gate's
threshold that ranking and the gate disagree by a dB or two between structurally different mixes
(a uniform recipe the proxy puts below failed mixes can pass). What is left of ``--max-tries``
is spent on two verified steps, each a real write and verify:

1. **Uniform seeds.** Each uniform recipe predicted smaller than the smallest pass, whose
   predicted output SQNR lies within the proxy's observed error of the smallest pass's (the
   spread of gate value minus prediction over every verified try, at least ``MIN_BAND_DB``), is
   verified, smallest first, until one passes; it becomes the base.
2. **Downgrades.** From the smallest pass, the (layer, cheaper type) steps with the least
   predicted noise added per byte saved are applied: as many as the calibrated gate model
   (the smallest pass's measured value moved by the fitted slope of gate value over predicted
   SQNR) keeps above the threshold plus half the margin, at least one. A pass becomes the new
   base; a failure halves the step count, and a single failed step is never tried again.

So the result is strictly smaller than every uniform recipe the search verified passing whenever
a single-layer downgrade of it passes and tries are left. Everything depends only on the cost
model's first-order numbers and verified metrics: the same inputs give the same tries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from weightsmith.auto.costs import CostModel, to_db
from weightsmith.auto.formats import Layout, ggml_bytes
from weightsmith.verify.gates import Gate
from weightsmith.verify.metrics import METRICS

MIN_BAND_DB = 1.0  # the least proxy error assumed when choosing uniform seeds
HALF_MARGIN_DB = 0.25  # what a downgrade chain keeps above a dB threshold (calibrated)
# A downgrade must save at least this share of the layer's bytes: below it, bytes the layout does
# not count (tensor names, scale tensors, config groups) can make the written file larger.
MIN_SAVING = 0.01

# try_fn(choice, aim_db, phase) -> Attempt (search.Attempt: predicted_db, metrics, passed, bytes, choice)
TryFn = Callable[[dict[str, str], float, str], Any]


def predicted_bytes(layout: Layout, choice: Mapping[str, str]) -> int:
    """The mix's bytes from the layout (the file's bytes, as the format writes them)."""
    units = {u.name: u for u in layout.units}
    total = layout.fixed_bytes
    for name, t in choice.items():
        u = units[name]
        total += u.sizes[t] if t in u.sizes else ggml_bytes(t, u.shape)
    return total


def db_gates(targets: Sequence[Gate]) -> list[Gate]:
    """The gates whose metric is in dB and higher-is-better: the ones the proxy calibrates to."""
    out = []
    for g in targets:
        info = METRICS.get(g.metric)
        if info is not None and info.higher_is_better and info.unit == "dB":
            out.append(g)
    return out


def calibration(attempts: Sequence[Any], gate: Gate) -> tuple[float, float]:
    """(slope of gate value over predicted SQNR by least squares, spread of value - prediction)
    over the verified tries; slope 1 with fewer than two distinct predictions, clamped to
    [0.2, 3]."""
    pts = [
        (a.predicted_db, a.metrics.get(gate.metric))
        for a in attempts
        if math.isfinite(a.predicted_db)
        and a.metrics.get(gate.metric) is not None
        and math.isfinite(a.metrics[gate.metric])
    ]
    if not pts:
        return 1.0, 0.0
    offsets = [v - p for p, v in pts]
    spread = max(offsets) - min(offsets)
    mx = sum(p for p, _ in pts) / len(pts)
    my = sum(v for _, v in pts) / len(pts)
    sxx = sum((p - mx) ** 2 for p, _ in pts)
    if sxx < 0.01 * len(pts):
        return 1.0, spread
    slope = sum((p - mx) * (v - my) for p, v in pts) / sxx
    return min(3.0, max(0.2, slope)), spread


def refine(
    layout: Layout,
    costs: CostModel,
    targets: Sequence[Gate],
    attempts: list[Any],
    budget: int,
    try_fn: TryFn,
    notes: list[str],
) -> None:
    """Spend at most ``budget`` verified tries making the smallest pass smaller (appends to
    ``attempts``)."""
    tried = [a.choice for a in attempts]
    left = budget

    def smallest() -> Any:
        ok = [a for a in attempts if a.passed]
        return min(ok, key=lambda a: (a.bytes, -a.predicted_db)) if ok else None

    def run(choice: dict[str, str], phase: str) -> Any:
        nonlocal left
        left -= 1
        tried.append(choice)
        a = try_fn(choice, math.nan, phase)
        attempts.append(a)
        return a

    best = smallest()
    if best is None or left < 1:
        return
    gates = db_gates(targets)
    band = max([MIN_BAND_DB] + [calibration(attempts, g)[1] for g in gates])
    best_b = predicted_bytes(layout, best.choice)
    seeds = sorted(
        (predicted_bytes(layout, mix), label, mix)
        for label, mix in layout.uniform.items()
        if mix not in tried
        and predicted_bytes(layout, mix) < best_b
        and to_db(costs.predicted(mix)) >= best.predicted_db - band
    )
    for _, label, mix in seeds:
        if left < 2:  # keep one try for a downgrade
            break
        if run(dict(sorted(mix.items())), f"uniform {label}").passed:
            break
    if seeds:
        notes.append(
            f"uniform recipes within {band:.2f} dB (the proxy's observed error) of the smallest pass "
            f"and smaller: {', '.join(s[1] for s in seeds)}"
        )
    _downgrades(layout, costs, gates, attempts, smallest, run, lambda: left, tried)


def _downgrades(
    layout: Layout,
    costs: CostModel,
    gates: list[Gate],
    attempts: list[Any],
    smallest: Callable[[], Any],
    run: Callable[[dict[str, str], str], Any],
    left: Callable[[], int],
    tried: list[dict[str, str]],
) -> None:
    units = {u.name: u for u in layout.units}
    rejected: set[tuple[str, str]] = set()
    kmax = len(units)
    while left() > 0:
        base = smallest()
        steps = _steps(units, costs, base.choice, rejected)
        if not steps:
            return
        k = min(kmax, _chain_length(costs, gates, attempts, base, steps))
        choice = dict(base.choice)
        for _, u, t in steps[:k]:
            choice[u] = t
        choice = dict(sorted(choice.items()))
        if choice in tried:  # a chain already verified (and failed): shorter next time
            if k == 1:
                rejected.add((steps[0][1], steps[0][2]))
            kmax = max(1, k // 2)
            continue
        a = run(choice, f"downgrade {k} layer" + ("s" if k > 1 else ""))
        if a.passed:
            kmax = len(units)
        elif k == 1:
            rejected.add((steps[0][1], steps[0][2]))
        else:
            kmax = max(1, k // 2)


def _steps(
    units: Mapping[str, Any], costs: CostModel, choice: Mapping[str, str], rejected: set[tuple[str, str]]
) -> list[tuple[float, str, str]]:
    """One best cheaper type per unit, as (noise added per byte saved, unit, type), best first
    (a type that saves less than ``MIN_SAVING`` of the layer is no downgrade)."""
    out = []
    for name, cur in sorted(choice.items()):
        u = units[name]
        cur_b = u.sizes[cur] if cur in u.sizes else ggml_bytes(cur, u.shape)
        cur_n = costs.noise(name, cur)
        best = None
        for t in u.candidates:
            saved = cur_b - u.sizes[t]
            if saved < MIN_SAVING * cur_b or (name, t) in rejected:
                continue
            rate = (costs.noise(name, t) - cur_n) / saved
            if best is None or (rate, t) < best[:2]:
                best = (rate, t)
        if best is not None:
            out.append((best[0], name, best[1]))
    return sorted(out)


def _chain_length(
    costs: CostModel, gates: list[Gate], attempts: list[Any], base: Any, steps: list[tuple[float, str, str]]
) -> int:
    """How many of ``steps`` the calibrated gate model keeps above each dB threshold plus half
    the margin (at least one)."""
    if not gates:
        return 1
    cal = {g.text: calibration(attempts, g)[0] for g in gates}
    choice = dict(base.choice)
    k = 0
    for _, u, t in steps:
        choice[u] = t
        pred = to_db(costs.predicted(choice))
        for g in gates:
            m = base.metrics.get(g.metric)
            if m is None or not math.isfinite(m):
                return max(1, k)
            if m + cal[g.text] * (pred - base.predicted_db) < g.threshold + HALF_MARGIN_DB:
                return max(1, k)
        k += 1
    return max(1, k)
