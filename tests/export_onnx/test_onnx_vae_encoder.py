"""Every family's VAE encoder exported through the API from its export-test fixture (the tiny VAE
cut to the op kinds its graph needs: ``Component.tiny_export_config``), then run in ONNX Runtime
at the plan's two shapes and compared with the torch model (``onnxkit``, ORT_RTOL). The decoders
are in test_onnx_vae_decoder.py: one file per half, so that ``--dist loadfile`` traces them on
both workers (seconds each: reports/onnx_vae_trace.md). One export per family (module-scoped).
"""

from __future__ import annotations

import pytest
from onnxkit import check_parts_match_torch, vae_part_fixture

from weightsmith.families.export import VAE_ENCODER

pytestmark = pytest.mark.slow  # seconds of tracing per family (still run by make test)

exported = vae_part_fixture(VAE_ENCODER)


def test_vae_encoder_matches_torch_in_onnxruntime_at_two_shapes(exported):
    check_parts_match_torch(*exported)
