"""``--scheme auto:FORMAT``: the smallest per-layer mix of a format's types that passes a gate.

``formats`` lists what each format family can choose per layer and how it writes a mix;
``costs`` measures each layer at each type alone on recorded transformer calls (cached);
``allocate`` picks one type per layer; ``search`` writes and verifies until the gate holds;
``report`` records the choice, the frontier and the cost of the search.
"""

from weightsmith.auto.search import AutoOptions, AutoResult, run_auto

__all__ = ["AutoOptions", "AutoResult", "run_auto"]
