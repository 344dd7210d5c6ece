"""One type per unit: the smallest mix under a noise budget, or the most faithful under a size budget.

Each unit's options are (type, bytes, noise ratio). Under the additivity assumption (see
``costs``) this is a multiple-choice knapsack; the Lagrangian relaxation's solutions are the points
where every unit sits on the lower convex hull of its own (bytes, noise) options, and walking
down the hulls by the best bytes saved per noise added visits them in order. ``min_bytes`` walks
from the most faithful mix while the budget holds, then spends what is left of the budget on any
other cheaper option (best saving first); ``max_fidelity`` walks up from the cheapest mix. Ties
break by unit name, so the same costs always give the same mix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    qtype: str
    bytes: int
    noise: float


def hull(options: list[Option]) -> list[Option]:
    """The lower convex hull of (bytes, noise), from the fewest bytes to the least noise; options
    that are both bigger and noisier than another never appear."""
    pts = sorted(options, key=lambda o: (o.bytes, o.noise, o.qtype))
    front: list[Option] = []
    for o in pts:
        if front and o.noise >= front[-1].noise:
            continue  # dominated: more bytes, no less noise
        front.append(o)
    out: list[Option] = []
    for o in front:
        while len(out) >= 2 and _cross(out[-2], out[-1], o) <= 0:
            out.pop()
        out.append(o)
    return out


def _cross(a: Option, b: Option, c: Option) -> float:
    return (b.bytes - a.bytes) * (c.noise - a.noise) - (b.noise - a.noise) * (c.bytes - a.bytes)


Table = Mapping[str, list[Option]]


def _total(table: Table, pick: Mapping[str, Option]) -> tuple[int, float]:
    return sum(o.bytes for o in pick.values()), sum(o.noise for o in pick.values())


def best_fidelity_mix(table: Table) -> dict[str, Option]:
    return {u: min(opts, key=lambda o: (o.noise, o.bytes, o.qtype)) for u, opts in sorted(table.items())}


def frontier(table: Table) -> list[tuple[int, float]]:
    """(bytes, noise) of the hull walk from the most faithful mix to the smallest."""
    hulls = {u: hull(o) for u, o in table.items()}
    idx = {u: len(h) - 1 for u, h in hulls.items()}
    pts = [_total(table, {u: hulls[u][i] for u, i in idx.items()})]
    while True:
        step = _best_down(hulls, idx)
        if step is None:
            return pts
        idx[step] -= 1
        pts.append(_total(table, {u: hulls[u][i] for u, i in idx.items()}))


def _best_down(hulls: Mapping[str, list[Option]], idx: Mapping[str, int], room: float = float("inf")):
    best = None
    for u in sorted(hulls):
        i = idx[u]
        if i == 0:
            continue
        hi, lo = hulls[u][i], hulls[u][i - 1]
        dn = lo.noise - hi.noise
        if dn > room:
            continue
        saved = hi.bytes - lo.bytes
        rate = saved / dn if dn > 0 else float("inf")
        if best is None or rate > best[0]:
            best = (rate, u)
    return None if best is None else best[1]


def min_bytes(
    table: Table, budget: float, seeds: Sequence[Mapping[str, str]] = ()
) -> dict[str, Option] | None:
    """The smallest mix whose summed noise is at most ``budget``; None if even the most faithful
    mix is over it. ``seeds`` (e.g. the uniform recipes, unit -> type) are improved the same way
    and win when smaller: the hull walk is greedy, so a uniform recipe is never beaten by a
    larger mix at the same noise."""
    hulls = {u: hull(o) for u, o in table.items()}
    idx = {u: len(h) - 1 for u, h in hulls.items()}
    pick = {u: hulls[u][i] for u, i in idx.items()}
    noise = _total(table, pick)[1]
    if noise > budget * (1 + 1e-12):
        return None
    while True:
        u = _best_down(hulls, idx, budget - noise)
        if u is None:
            break
        idx[u] -= 1
        noise += hulls[u][idx[u]].noise - pick[u].noise
        pick[u] = hulls[u][idx[u]]
    best = _fill(table, pick, budget)
    faithful = best_fidelity_mix(table)
    for seed in seeds:
        start = {
            u: next((o for o in opts if o.qtype == seed.get(u)), faithful[u]) for u, opts in table.items()
        }
        if _total(table, start)[1] > budget:
            continue
        cand = _fill(table, start, budget)
        if _rank(cand) < _rank(best):
            best = cand
    return best


def _rank(pick: Mapping[str, Option]) -> tuple[int, float, list[tuple[str, str]]]:
    return (
        sum(o.bytes for o in pick.values()),
        sum(o.noise for o in pick.values()),
        sorted((u, o.qtype) for u, o in pick.items()),
    )


def _fill(table: Table, pick: Mapping[str, Option], budget: float) -> dict[str, Option]:
    """Spend what is left of the budget on any cheaper option, largest saving first."""
    pick = dict(pick)
    noise = _total(table, pick)[1]
    while True:
        best = None
        for u in sorted(table):
            for o in table[u]:
                dn = o.noise - pick[u].noise
                saved = pick[u].bytes - o.bytes
                if saved > 0 and noise + dn <= budget and (best is None or saved > best[0]):
                    best = (saved, u, o, dn)
        if best is None:
            return dict(sorted(pick.items()))
        _, u, o, dn = best
        pick[u] = o
        noise += dn


def max_fidelity(table: Table, budget_bytes: int) -> dict[str, Option] | None:
    """The least noisy mix of at most ``budget_bytes``; None if even the smallest mix is larger."""
    hulls = {u: hull(o) for u, o in table.items()}
    idx = {u: 0 for u in hulls}
    pick = {u: hulls[u][0] for u in hulls}
    size = _total(table, pick)[0]
    if size > budget_bytes:
        return None
    while True:
        best = None
        for u in sorted(hulls):
            i = idx[u]
            if i + 1 >= len(hulls[u]):
                continue
            up = hulls[u][i + 1]
            cost = up.bytes - pick[u].bytes
            if size + cost > budget_bytes:
                continue
            gain = pick[u].noise - up.noise
            rate = gain / cost if cost > 0 else float("inf")
            if best is None or rate > best[0]:
                best = (rate, u)
        if best is None:
            return dict(sorted(pick.items()))
        u = best[1]
        idx[u] += 1
        size += hulls[u][idx[u]].bytes - pick[u].bytes
        pick[u] = hulls[u][idx[u]]
