# `make demo` and `make test` each set up .venv on a bare machine (idempotent) before they run.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.weightsmith-installed
# The CPU build of torch that lies on this disk; override on CUDA machines (TORCH=torch).
TORCH  ?= torch==2.13.0
# The full suite runs in this many processes (pytest-xdist; a file's tests stay together so its
# module fixtures are built once). 2 = this project's CI machine.
TEST_WORKERS ?= 2

.PHONY: demo test test-onnx-slow test-onnx-vae lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/python -m weightsmith.kernels.ggml.native
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/weightsmith demo

# The GGUF tests run twice more: with the torch kernels forced (what a GPU runs) and with an 8-lane
# build of the C kernels (AVX2 width), so no result depends on this machine's kernels or vector width
# (the bytes, and one GGUF verified through both loaders: identical bytes load identically).
KERNEL_TESTS := tests/quantize/test_gguf_quantize.py \
	tests/verify/test_verify_families.py::test_sana_gguf_through_both_loaders

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy
	WEIGHTSMITH_GGML_BACKEND=torch $(BIN)/python -m pytest -p no:cacheprovider $(KERNEL_TESTS)
	WEIGHTSMITH_NATIVE_CFLAGS="-DNL=8 -mprefer-vector-width=256" $(BIN)/python -m pytest -p no:cacheprovider $(KERNEL_TESTS)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25

# The ONNX export of the transformer variants with further interfaces (minutes of tracing each, so
# not part of `make test`; the VAE halves are, reports/onnx_vae_trace.md). test-onnx-vae: old name.
test-onnx-slow test-onnx-vae: $(STAMP)
	WEIGHTSMITH_ONNX_SLOW=1 $(BIN)/python -m pytest -p no:cacheprovider tests/export_onnx/test_onnx_export.py

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
