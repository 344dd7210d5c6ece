"""INT8/FP8/INT4 quantization of Linear weights: policy, the quantize run, output formats and runtimes."""
