"""Numeric kernels with no knowledge of files or models: ggml's block quantizers (``ggml``), the
INT8/FP8/INT4 Linear-weight arithmetic (``linear``), and the microscaled NVFP4/MXFP4/MXFP8 arithmetic
(``microscale``) with its storage layouts: nibble order, padding, cuBLAS 128x4 scale swizzle
(``microscale_layout``).

They depend on nothing in weightsmith but its errors, so readers in ``weightsmith.io`` can
dequantize what they read and ``weightsmith.quantize`` can quantize what it writes.
"""
