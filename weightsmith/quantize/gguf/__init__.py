"""GGUF quantization: recipes, the quantize run, importance matrices and the GGUF model loader."""
