"""Verification: reference generations of a baseline and its candidates, scored, gated and reported.

``verify`` runs the same generations (same scheduler, seeds, prompt embeddings) through each
family's diffusers pipeline with the baseline and with every candidate, loaded through
weightsmith's artifact loaders (and diffusers' own GGUF loader where one exists), and scores the
difference with the metrics in ``metrics``. ``sensitivity`` ranks Linear layers by how much
quantizing each alone changes the output; ``importance`` collects llama.cpp importance matrices
from the same generations.
"""

from weightsmith.verify.gates import Gate, load_gates_toml, parse_gate
from weightsmith.verify.metrics import METRICS
from weightsmith.verify.run import VerifyOptions, VerifyResult, check_gates, verify
from weightsmith.verify.settings import GenerationSettings, parse_seeds

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

from weightsmith._facade import verb_module  # noqa: E402 - `weightsmith.verify(...)` is the verb

verb_module(__name__)
