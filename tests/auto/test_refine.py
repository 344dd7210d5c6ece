"""The verified refinement alone, against a synthetic gate whose value departs from the cost
model's prediction the way frame psnr departs from probe SQNR (a per-type offset the proxy does
not see): uniform seeds, downgrades, the try budget, determinism."""

from __future__ import annotations

import math

from weightsmith.auto.costs import to_db
from weightsmith.auto.formats import Layout, Unit
from weightsmith.auto.refine import calibration, predicted_bytes, refine
from weightsmith.auto.search import Attempt, aimed_tries
from weightsmith.verify.gates import parse_gate

TYPES = {"q3": (300, 0.0008), "q4": (400, 0.0006), "q5": (500, 0.0004), "q8": (800, 0.00002)}
UNITS = [f"u{i}" for i in range(6)]
GATE = parse_gate("psnr>=32")
# What the gate sees that the proxy does not: q3 and q4 do better than predicted, q8 worse.
HIDDEN_DB = {"q3": 2.0, "q4": 2.0, "q5": 0.0, "q8": -2.0}


class Costs:
    """The cost model's interface: each unit's noise ratio per type (unit i a little noisier)."""

    def noise(self, unit: str, qtype: str) -> float:
        return TYPES[qtype][1] * (1 + 0.1 * int(unit[1:]))

    def predicted(self, choice: dict[str, str]) -> float:
        return sum(self.noise(u, t) for u, t in sorted(choice.items()))


def _layout() -> Layout:
    units = [Unit(u, (u,), (16, 16), {t: b for t, (b, _) in TYPES.items()}) for u in UNITS]
    return Layout(units, 1000, {t: {u: t for u in UNITS} for t in TYPES})


def _gate_value(choice: dict[str, str]) -> float:
    pred = to_db(Costs().predicted(choice))
    hidden = sum(HIDDEN_DB[t] for t in choice.values()) / len(choice)
    return pred + 7.0 + hidden  # frames forgive 7 dB of probe error, plus the hidden part


def _try(layout: Layout, log: list[str]):
    def run(choice: dict[str, str], aim: float, phase: str) -> Attempt:
        log.append(phase)
        v = _gate_value(choice)
        pred = to_db(Costs().predicted(choice))
        return Attempt(
            aim, pred, math.nan, predicted_bytes(layout, choice), v >= 32, {"psnr": v}, 0.0, choice
        )

    return run


def _search(start: list[str], budget: int) -> tuple[list[Attempt], list[str]]:
    layout, log = _layout(), []
    attempts = [_try(layout, log)({u: t for u in UNITS}, 30.0, "aimed") for t in start]
    refine(layout, Costs(), [GATE], attempts, budget, _try(layout, log), [])
    return attempts, log


def test_a_uniform_recipe_the_proxy_ranks_low_is_verified_and_then_beaten():
    attempts, log = _search(["q8", "q5"], 6)
    assert len(attempts) <= 8  # the aimed tries plus the budget
    assert log[2] == "uniform q4"  # within the proxy's observed error of the q5 pass, smaller
    best = min((a for a in attempts if a.passed), key=lambda a: a.bytes)
    uniform_q4 = next(a for a in attempts if set(a.choice.values()) == {"q4"})
    assert uniform_q4.passed and best.bytes < uniform_q4.bytes  # strictly smaller than it
    assert "q3" in best.choice.values() and best.metrics["psnr"] >= 32
    assert _search(["q8", "q5"], 6)[0] == attempts  # deterministic: the same tries, the same result


def test_downgrades_from_a_pass_stay_within_the_budget_and_never_retry_a_failed_step():
    attempts, log = _search(["q8", "q5"], 3)
    assert len(attempts) == 5 and all(p != "aimed" for p in log[2:])
    choices = [tuple(sorted(a.choice.items())) for a in attempts]
    assert len(set(choices)) == len(choices)
    assert min(a.bytes for a in attempts if a.passed) < predicted_bytes(_layout(), {u: "q5" for u in UNITS})


def test_nothing_is_tried_without_a_pass_or_a_budget():
    for start, budget in ((["q3"], 4), (["q5"], 0)):
        attempts, _ = _search(start, budget)
        assert len(attempts) == 1


def test_calibration_fits_the_slope_and_the_spread_of_the_offsets():
    pts = [Attempt(0, p, 0, 0, True, {"psnr": 2 * p + 1}, 0, {}) for p in (10.0, 12.0, 15.0)]
    slope, spread = calibration(pts, GATE)
    assert math.isclose(slope, 2.0) and math.isclose(spread, 5.0)
    assert calibration(pts[:1], GATE) == (1.0, 0.0)
    assert [aimed_tries(n) for n in (1, 2, 3, 4, 10)] == [1, 1, 2, 3, 7]
