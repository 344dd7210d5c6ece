"""``--scheme auto:FORMAT``: the smallest per-layer mix of a format's types that passes a gate.

``formats`` lists what each format family can choose per layer and how it writes a mix;
``costs`` measures each layer at each type alone on recorded transformer calls (cached);
``allocate`` picks one type per layer; ``search`` writes and verifies until the gate holds;
``report`` records the choice, the frontier and the cost of the search.
"""

from weightsmith._lazy import lazy_getattr

# Imported on first use (PEP 562): the quantize command reaches ``auto.command`` for every scheme,
# and a plain GGUF job needs no torch.
__getattr__ = lazy_getattr(__name__, {"AutoOptions": "search", "AutoResult": "search", "run_auto": "search"})

__all__ = ["AutoOptions", "AutoResult", "run_auto"]
