"""load_model: any layout and container back as the family's diffusers module, equal to the source."""

from __future__ import annotations

import pytest
import torch

from weightsmith.families import components
from weightsmith.load import load_model
from weightsmith.tiny import Fixture, save_fixture, tiny_state

CASES = [(c.family, c.component, c.variants[0], layout) for c in components() for layout in c.layouts]


@pytest.mark.parametrize(
    ("family", "component", "variant", "layout"), CASES, ids=["-".join(c) for c in CASES]
)
def test_load_model_from_every_layout(tmp_path, family, component, variant, layout):
    container = {
        "diffusers": "safetensors",
        "original": "safetensors",
        "sat": "sat" if component == "transformer" else "torch",
    }[layout]
    path = save_fixture(Fixture(family, component, variant, layout, container), tmp_path)
    state, config = tiny_state(family, component, variant, "diffusers")
    model = load_model(path, config=config)
    got = model.state_dict()
    assert sorted(got) == sorted(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def test_load_model_casts_plain_weights(tmp_path):
    path = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), tmp_path)
    model = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
