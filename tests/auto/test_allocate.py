"""The allocation alone: hulls, the smallest mix under a noise budget, the best mix under a size."""

from __future__ import annotations

import itertools

from weightsmith.auto.allocate import Option, frontier, hull, max_fidelity, min_bytes

TABLE = {
    "a": [Option("q2", 20, 0.30), Option("q4", 40, 0.05), Option("q6", 60, 0.01), Option("f16", 160, 0.0)],
    "b": [Option("q2", 20, 0.02), Option("q4", 40, 0.01), Option("q6", 60, 0.005), Option("f16", 160, 0.0)],
    "c": [Option("q2", 10, 0.50), Option("q3", 15, 0.45), Option("q4", 20, 0.08), Option("q8", 40, 0.001)],
}


def _brute(budget: float) -> int:
    best = None
    for combo in itertools.product(*TABLE.values()):
        if sum(o.noise for o in combo) <= budget:
            size = sum(o.bytes for o in combo)
            best = size if best is None else min(best, size)
    return best


def test_hull_drops_dominated_and_concave_points():
    pts = hull(TABLE["c"])
    assert [o.qtype for o in pts] == ["q2", "q4", "q8"]  # q3 lies above the segment q2-q4


def test_min_bytes_meets_the_budget_and_is_near_the_exhaustive_optimum():
    for budget in (0.01, 0.02, 0.06, 0.1, 0.2, 0.5, 1.0):
        pick = min_bytes(TABLE, budget)
        assert pick is not None
        assert sum(o.noise for o in pick.values()) <= budget
        got = sum(o.bytes for o in pick.values())
        assert got <= _brute(budget) * 1.25, (budget, got, _brute(budget))


def test_min_bytes_none_when_even_the_best_mix_is_too_noisy():
    assert min_bytes(TABLE, 0.0005) is None


def test_max_fidelity_respects_the_size():
    for size in (50, 80, 120, 200, 400):
        pick = max_fidelity(TABLE, size)
        assert pick is not None and sum(o.bytes for o in pick.values()) <= size
    assert max_fidelity(TABLE, 49) is None


def test_frontier_runs_from_faithful_to_small():
    pts = frontier(TABLE)
    sizes = [b for b, _ in pts]
    noises = [n for _, n in pts]
    assert sizes == sorted(sizes, reverse=True) and noises == sorted(noises)
    assert sizes[-1] == 50  # every unit at its cheapest


def test_same_costs_same_mix():
    assert min_bytes(TABLE, 0.1) == min_bytes(dict(reversed(list(TABLE.items()))), 0.1)


def test_seeded_search_stays_within_the_budget_and_finds_the_smallest():
    table = {
        "a": [Option("x", 10, 0.10), Option("y", 12, 0.01), Option("z", 30, 0.0)],
        "b": [Option("x", 10, 0.10), Option("y", 12, 0.01), Option("z", 30, 0.0)],
    }
    seeded = min_bytes(table, 0.2, [{"a": "x", "b": "x"}])
    assert seeded is not None and sum(o.bytes for o in seeded.values()) == 20
    assert sum(o.noise for o in seeded.values()) <= 0.2
