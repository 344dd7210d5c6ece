"""CI gates: ``--gate 'psnr>=30'`` (repeatable) or a TOML file, checked against every candidate.

A gate compares one metric's worst value over all prompts and seeds (the lowest PSNR, the highest
flicker) with a threshold. Besides the gates, two checks always apply: the candidate stays finite
(no NaN/Inf at any step or in the frames) and no frame goes black or constant. Any failure makes
``verify`` exit 1 with a table naming the candidate, the metric, its value and the gate.

TOML form::

    gates = ["psnr>=30", "ssim>=0.95"]
    # or
    [gates]
    psnr = ">=30"
    latent_sqnr = ">= 20"
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from weightsmith.errors import InputError, UsageError
from weightsmith.verify.metrics import METRICS

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}
_RX = re.compile(
    r"^\s*([a-z_][a-z0-9_]*)\s*(>=|<=|==|>|<)\s*([-+]?(?:inf|[0-9]*\.?[0-9]+(?:e[-+]?\d+)?))\s*$", re.I
)


MAX_GATE_CHARS = 200  # "latent_sqnr >= 20" is 17; a gate longer than this is not one
MAX_GATES_BYTES = 1 << 20
MAX_GATES = 1000


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float

    @property
    def text(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def passes(self, value: float) -> bool:
        return bool(OPS[self.op](value, self.threshold))


@dataclass(frozen=True)
class GateResult:
    candidate: str
    check: str  # a gate's text, or "finite" / "frames" for the built-in checks
    metric: str
    value: str
    passed: bool
    applicable: bool = True


def _shown(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_gate(text: str) -> Gate:
    """``'psnr>=30'`` to a Gate; unknown metrics and malformed text are usage errors."""
    m = _RX.match(text) if len(text) <= MAX_GATE_CHARS else None
    if not m:
        raise UsageError(
            f"cannot read gate {_shown(text)}",
            hint="write METRIC OP NUMBER, e.g. 'psnr>=30' or 'flicker<=0.01'",
        )
    name = m.group(1).lower()
    if name not in METRICS:
        raise UsageError(
            f"gate {_shown(text)} names no known metric", hint=f"known metrics: {', '.join(METRICS)}"
        )
    number = m.group(3)
    threshold = float(number)
    if math.isinf(threshold) and "inf" not in number.lower():
        # 1e999 or a 400-digit number: beyond float range, not a threshold anyone means.
        raise UsageError(
            f"gate {_shown(text)}: {number[:20]}... is beyond the range of a threshold",
            hint="write a threshold such as 30 or 0.95 (or inf for exact)",
        )
    return Gate(name, m.group(2), threshold)


def load_gates_toml(path: str | Path) -> list[Gate]:
    """Gates from a TOML file (``gates = [...]`` or a ``[gates]`` table of ``metric = "op value"``).

    Read and checked before any model is opened, so a broken file ends the run at once.
    """
    from weightsmith.io.structured import parse_toml

    p = Path(path)
    hint = 'write gates = ["psnr>=30"] or a [gates] table such as psnr = ">=30"'
    if p.is_dir():
        raise InputError(f"--gates {p} is a directory; a TOML file is expected", hint=hint)
    if not p.exists():
        raise InputError(f"--gates {p} does not exist", hint="pass a TOML file with a gates list or table")
    if not p.is_file():
        raise InputError(f"--gates {p} is not a regular file; a TOML file is expected", hint=hint)
    try:
        size = p.stat().st_size
        if size > MAX_GATES_BYTES:
            raise InputError(f"--gates {p} is {size} bytes; a gates file is a few lines", hint=hint)
        raw = p.read_bytes()
    except OSError as e:
        raise InputError(f"--gates {p} cannot be read ({e.strerror or e})", hint=hint) from None
    data = parse_toml(raw, f"--gates {p}", error=InputError, hint=hint)
    g = data.get("gates")
    if isinstance(g, list):
        bad = [x for x in g if not isinstance(x, str)]
        if bad:
            raise InputError(
                f"--gates {p}: the gates list holds {type(bad[0]).__name__} {_shown(str(bad[0]), 40)}, "
                "not a gate string",
                hint=hint,
            )
        gates = [parse_gate(x) for x in g]
    elif isinstance(g, dict):
        gates = []
        for k, v in g.items():
            vals = v if isinstance(v, list) else [v]
            for x in vals:
                if isinstance(x, bool) or not isinstance(x, (str, int, float)):
                    raise InputError(
                        f"--gates {p}: gate {_shown(str(k), 40)} is {type(x).__name__} "
                        f"{_shown(str(x), 40)}, not a condition",
                        hint=hint,
                    )
                if isinstance(x, int) and abs(x) > 10**15:
                    raise InputError(
                        f"--gates {p}: gate {_shown(str(k), 40)} has a threshold beyond any metric's range",
                        hint=hint,
                    )
                gates.append(parse_gate(f"{k}{x}" if isinstance(x, str) else f"{k}>={x}"))
    else:
        raise InputError(f"--gates {p} has no 'gates' list or [gates] table", hint=hint)
    if len(gates) > MAX_GATES:
        raise InputError(f"--gates {p} holds {len(gates)} gates, more than {MAX_GATES}", hint=hint)
    return gates


def frame_gates(gates: Iterable[Gate]) -> list[Gate]:
    return [g for g in gates if METRICS[g.metric].needs_frames]


def format_value(v: float | None) -> str:
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if 0.99 <= v < 1:
        return f"{v:.6f}"
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return f"{v:.3e}"


def evaluate(
    name: str, worst: dict[str, float | None], failures: list[str], gates: list[Gate]
) -> list[GateResult]:
    """Every gate and built-in check for one candidate."""
    out: list[GateResult] = []
    failures = list(dict.fromkeys(failures))  # the same failure on every seed is named once
    nonfinite = [f for f in failures if "NaN" in f]
    frames = [f for f in failures if f not in nonfinite]
    out.append(GateResult(name, "finite", "finite", "; ".join(nonfinite) or "yes", not nonfinite))
    out.append(GateResult(name, "frames", "frames", "; ".join(frames) or "ok", not frames))
    for g in gates:
        v = worst.get(g.metric)
        if v is None:
            # Not computable here (flicker of a single image) passes as n/a; a candidate that
            # produced nothing to measure has already failed "finite".
            out.append(GateResult(name, g.text, g.metric, "n/a", not nonfinite, applicable=False))
            continue
        out.append(GateResult(name, g.text, g.metric, format_value(v), g.passes(v)))
    return out


def failure_table(results: list[GateResult]) -> str:
    """A compact table of the failed checks: candidate | check | value."""
    bad = [r for r in results if not r.passed]
    if not bad:
        return ""
    w1 = max(len("candidate"), *(len(r.candidate) for r in bad))
    w2 = max(len("gate"), *(len(r.check) for r in bad))
    lines = [f"{'candidate':<{w1}}  {'gate':<{w2}}  value", f"{'-' * w1}  {'-' * w2}  -----"]
    lines += [f"{r.candidate:<{w1}}  {r.check:<{w2}}  {r.value}" for r in bad]
    return "\n".join(lines)
