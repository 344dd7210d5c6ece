"""Publish: turn a folder of verified artifacts into a Hub-ready folder (names users expect, a
sha256 list, a model card carrying the measured fidelity) and upload it.

``discover`` finds the artifacts and the verify reports that scored them, ``folder`` plans the
names and builds the staging folder, ``card`` writes README.md and the fidelity plot, ``run``
is the command's flow and ``upload`` talks to the Hub.
"""

from weightsmith._facade import verb_module  # noqa: E402 - `weightsmith.publish(...)` is the verb

verb_module(__name__)
