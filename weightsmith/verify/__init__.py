"""Verification: reference generations of a baseline and its candidates, scored, gated and reported.

``verify`` runs the same generations (same scheduler, seeds, prompt embeddings) through each
family's diffusers pipeline with the baseline and with every candidate, loaded through
weightsmith's artifact loaders (and diffusers' own GGUF loader where one exists), and scores the
difference with the metrics in ``metrics``. ``sensitivity`` ranks Linear layers by how much
quantizing each alone changes the output; ``importance`` collects llama.cpp importance matrices
from the same generations.
"""

from __future__ import annotations

from weightsmith._lazy import lazy_getattr

# Where each public name lives, imported on first use (PEP 562): the command line builds the
# verify commands from ``verify.cli`` and ``verify.settings`` without the torch-using runners.
_WHERE = {
    "Gate": "gates",
    "load_gates_toml": "gates",
    "parse_gate": "gates",
    "METRICS": "metrics",
    "VerifyOptions": "run",
    "VerifyResult": "run",
    "check_gates": "run",
    "verify": "run",
    "GenerationSettings": "settings",
    "parse_seeds": "settings",
}

__all__ = [
    "METRICS",
    "Gate",
    "GenerationSettings",
    "VerifyOptions",
    "VerifyResult",
    "check_gates",
    "load_gates_toml",
    "parse_gate",
    "parse_seeds",
    "verify",
]


__getattr__ = lazy_getattr(__name__, _WHERE)


from weightsmith._facade import verb_module  # noqa: E402 - `weightsmith.verify(...)` is the verb

verb_module(__name__)
