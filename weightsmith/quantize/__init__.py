"""Quantization: GGUF recipes (``gguf/``) and the INT8/FP8/INT4 Linear schemes (``linear/``).

Both run in the conversion stream (read, plan, quantize one tensor at a time, write atomically)
and share what is not specific to either: the scheme registry (``schemes``), the device picker
(``device``), the keep options (``keep``), the run options (``options``), the per-layer report
(``report``) and the staging of DST with its report (``outputs``). The numeric kernels live in
``weightsmith.kernels``; what each family keeps in high precision is its ``Component.quant``.
"""

from weightsmith._facade import verb_module  # noqa: E402 - `weightsmith.quantize(...)` is the verb

verb_module(__name__)
