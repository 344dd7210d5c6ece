"""Layout conversion: a plan of per-tensor ops, run as a stream from a reader into a writer."""
