"""Each unit's measured effect on the output at each candidate type, alone (the cost model).

The baseline's reference generations are recorded once (``verify.sensitivity.record_probes``: a
few transformer calls spread over the steps). Each unit alone is quantized at its reference type
and the transformer re-run on those calls: its *noise ratio* there is measured (the output
error's power over the output's power, summed over the probes; ``10 log10`` of its inverse is the
output SQNR ``weightsmith sensitivity`` ranks by). Its other types are estimated from that
measurement scaled by the layer-output error power each type causes on the layer's recorded
inputs (first order in the weight error). The allocation uses these numbers only, so a cache an
earlier run left never changes what a run chooses; after the search each chosen (unit, type) is
measured alone too (``refine``) for the report and the additivity check.

The additivity assumption the allocation rests on: quantizing several units adds their output
errors' powers (independent errors), so a mix's noise ratio is the sum of its units'. It is
checked on every chosen mix by quantizing all its units at once (``measure_mix``).

Results are cached in one JSON file per (baseline transformer content digest, generation
settings, probes, format): a re-run with the same inputs records no generation and re-runs no
layer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from weightsmith.auto.formats import AutoFormat, Unit
from weightsmith.io.atomic import atomic_file
from weightsmith.progress import bar
from weightsmith.verify.sensitivity import Probes, output_error

SCHEMA = "weightsmith.auto-costs/1"


class CostModel:
    """Noise ratios of (unit, type) and of whole mixes, measured on demand and cached."""

    def __init__(
        self,
        fmt: AutoFormat,
        units: list[Unit],
        probes: Callable[[], Probes],
        cache_file: Path | None,
        progress: bool = False,
    ) -> None:
        self.fmt, self.units = fmt, {u.name: u for u in units}
        self._probes_fn, self._probes = probes, None
        self.cache_file = cache_file
        self.progress = progress
        self.entries: dict[str, float] = {}  # measured: (unit, type) alone, one forward
        self.estimates: dict[str, float] = {}  # scaled from the unit's reference measurement
        self.mixes: dict[str, float] = {}
        self.hits = self.misses = 0
        if cache_file is not None and cache_file.is_file():
            try:
                data = json.loads(cache_file.read_text())
                if data.get("schema") == SCHEMA:
                    self.entries = {k: float(v) for k, v in data.get("entries", {}).items()}
                    self.estimates = {k: float(v) for k, v in data.get("estimates", {}).items()}
                    self.mixes = {k: float(v) for k, v in data.get("mixes", {}).items()}
            except (ValueError, OSError, TypeError, AttributeError):
                self.entries, self.mixes = {}, {}  # a damaged cache is a miss, never an error

    @property
    def probes(self) -> Probes:
        if self._probes is None:
            self._probes = self._probes_fn()
        return self._probes

    @property
    def recorded(self) -> bool:
        """Whether this run recorded reference generations (a fully cached run does not)."""
        return self._probes is not None

    def measure_all(self, types_of: Mapping[str, list[str]] | None = None) -> None:
        """Estimate every (unit, type) not cached yet (``types_of``: unit -> extra types).

        One forward per unit: the unit alone at its reference type (the middle candidate) gives
        its measured output noise; a forward hook sums the Gram matrix of its layer's inputs on
        the probes, so each other type's layer-output error power ``tr(dW G dW^T)`` is exact and
        cheap, and its output noise is the reference's scaled by that power (first order in the
        error). ``refine`` later measures the chosen types alone, for the report."""
        todo: list[Unit] = []
        for u in self.units.values():
            want = set(u.candidates) | set((types_of or {}).get(u.name, []))
            ref = _reference_type(u)
            if _key(u.name, ref) not in self.entries or any(
                _key(u.name, t) not in self.estimates for t in want - {ref}
            ):
                todo.append(u)
            else:
                self.hits += 1
        if not todo:
            return
        self.misses += len(todo)
        tr = self.probes.transformer
        params = dict(tr.named_parameters())
        modules = dict(tr.named_modules())
        sig = self._signal()
        with bar(len(todo), "costs", "layer", enabled=self.progress) as tick:
            for u in todo:
                types = sorted(set(u.candidates) | set((types_of or {}).get(u.name, [])))
                ref = _reference_type(u)
                grams: dict[str, torch.Tensor] = {}
                hooks = [
                    modules[p.rsplit(".", 1)[0]].register_forward_pre_hook(_gram_hook(grams, p))
                    for p in u.params
                ]
                try:
                    noise = self._forward_with(u, ref, params) / sig
                finally:
                    for h in hooks:
                        h.remove()
                self.entries[_key(u.name, ref)] = noise
                err = {t: self._layer_error(u, t, params, grams) for t in types}
                for t in types:
                    if t == ref:
                        continue
                    scale = err[t] / err[ref] if err[ref] > 0 else (0.0 if err[t] == 0 else math.inf)
                    self.estimates[_key(u.name, t)] = noise * scale
                tick.update(1)
        self.save()

    def refine(self, choice: Mapping[str, str]) -> int:
        """Measure (one forward each) the chosen (unit, type) pairs known only by estimate;
        returns how many were measured."""
        todo = [(u, t) for u, t in sorted(choice.items()) if _key(u, t) not in self.entries]
        if not todo:
            return 0
        params = dict(self.probes.transformer.named_parameters())
        sig = self._signal()
        with bar(len(todo), "refine", "layer", enabled=self.progress) as tick:
            for u, t in todo:
                self.entries[_key(u, t)] = self._forward_with(self.units[u], t, params) / sig
                tick.update(1)
        self.save()
        return len(todo)

    def _forward_with(self, u: Unit, qtype: str, params: dict[str, torch.nn.Parameter]) -> float:
        saved = [(params[p], params[p].data) for p in u.params]
        try:
            for prm, w in saved:
                prm.data = self.fmt.fake(w, u.name, qtype)
            _, noise, _ = output_error(self.probes.transformer, self.probes.calls)
        finally:
            for prm, w in saved:
                prm.data = w
        return noise

    def _layer_error(
        self, u: Unit, qtype: str, params: dict[str, torch.nn.Parameter], grams: dict[str, torch.Tensor]
    ) -> float:
        total = 0.0
        for p in u.params:
            w = params[p].data
            dw = (self.fmt.fake(w, u.name, qtype) - w).double()
            g = grams[p]
            total += float(((dw @ g) * dw).sum())
        return total

    def _signal(self) -> float:
        if "__signal__" not in self.entries:
            sig, _, _ = output_error(self.probes.transformer, self.probes.calls)
            self.entries["__signal__"] = sig
        return self.entries["__signal__"] or 1.0

    def noise(self, unit: str, qtype: str) -> float:
        """The noise ratio the allocation uses: measured at the unit's reference type, estimated
        at the others. Never a later ``refine`` measurement, so what a run chooses does not
        depend on what an earlier run left in the cache."""
        k = _key(unit, qtype)
        if k not in self.estimates and (qtype != _reference_type(self.units[unit]) or k not in self.entries):
            self.measure_all({unit: [qtype]})
        return self.estimates[k] if k in self.estimates else self.entries[k]

    def measured(self, unit: str, qtype: str) -> float | None:
        """The noise ratio of ``unit`` alone at ``qtype`` measured by a forward, if it was."""
        return self.entries.get(_key(unit, qtype))

    def predicted(self, choice: Mapping[str, str]) -> float:
        """The mix's noise ratio under the additivity assumption."""
        return sum(self.noise(u, t) for u, t in sorted(choice.items()))

    def measure_mix(self, choice: Mapping[str, str]) -> float:
        """The mix's noise ratio with every unit quantized at once (checks additivity)."""
        key = json.dumps(sorted(choice.items()))
        if key in self.mixes:
            return self.mixes[key]
        tr = self.probes.transformer
        params = dict(tr.named_parameters())
        saved = []
        try:
            for name, t in sorted(choice.items()):
                for p in self.units[name].params:
                    saved.append((params[p], params[p].data))
                    params[p].data = self.fmt.fake(params[p].data, name, t)
            _, noise, _ = output_error(tr, self.probes.calls)
        finally:
            for prm, w in reversed(saved):
                prm.data = w
        self.mixes[key] = noise / self._signal()
        self.save()
        return self.mixes[key]

    def save(self) -> None:
        if self.cache_file is None:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.cache_file, overwrite=True) as tmp:
            blob = {
                "schema": SCHEMA,
                "entries": self.entries,
                "estimates": self.estimates,
                "mixes": self.mixes,
            }
            tmp.write_text(json.dumps(blob))


def _reference_type(u: Unit) -> str:
    """The middle candidate by size (not a float type, whose noise is near zero)."""
    lossy = [t for t in u.candidates if t not in ("F16", "BF16", "F32", "keep")] or u.candidates
    return lossy[len(lossy) // 2]


def _gram_hook(grams: dict[str, torch.Tensor], param: str):
    def hook(_m: torch.nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        g = x.T @ x
        grams[param] = grams[param] + g if param in grams else g

    return hook


def _key(unit: str, qtype: str) -> str:
    return f"{unit}|{qtype}"


def to_db(ratio: float) -> float:
    """A noise ratio as SQNR in dB (``inf`` for none)."""
    return math.inf if ratio <= 0 else -10 * math.log10(ratio)


def from_db(db: float) -> float:
    return 10 ** (-db / 10)


def cost_key(material: Mapping[str, Any]) -> str:
    from weightsmith.verify.cache import cache_key

    return cache_key({"auto": SCHEMA, **material})
