"""Layout conversion: a plan of per-tensor ops, run as a stream from a reader into a writer."""

from weightsmith._facade import verb_module  # noqa: E402 - `weightsmith.convert(...)` is the verb

verb_module(__name__)
