"""Numeric kernels with no knowledge of files or models: ggml's block quantizers (``ggml``) and the
INT8/FP8/INT4 Linear-weight arithmetic (``linear``).

They depend on nothing in weightsmith but its errors, so readers in ``weightsmith.io`` can
dequantize what they read and ``weightsmith.quantize`` can quantize what it writes.
"""
