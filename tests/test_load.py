"""load_model: any layout and container back as the family's diffusers module, equal to the source."""

from __future__ import annotations

import pytest
import torch

from weightsmith.families import components, get_component
from weightsmith.load import load_model
from weightsmith.tiny import Fixture, save_fixture, tiny_state

CASES = [(c.family, c.component, c.variants[0], layout) for c in components() for layout in c.layouts]


@pytest.mark.parametrize(
    ("family", "component", "variant", "layout"), CASES, ids=["-".join(c) for c in CASES]
)
def test_load_model_from_every_layout(tmp_path, family, component, variant, layout):
    container = {"sat": "sat" if component == "transformer" else "torch"}.get(layout, "safetensors")
    path = save_fixture(Fixture(family, component, variant, layout, container), tmp_path)
    state, config = tiny_state(family, component, variant, "diffusers")
    model = load_model(path, config=config)
    # What a checkpoint of the model holds: a tied alias (a text encoder's embedding) once.
    got = get_component(family, component).checkpoint_state(model)
    assert sorted(got) == sorted(state)
    aliases = set(model.state_dict()) - set(got)
    assert all(model.get_parameter(a) is model.get_parameter(s) for a, s in _tied(family, component, aliases))
    exact = layout not in get_component(family, component).inexact_layouts
    for k, v in state.items():
        if exact:
            assert torch.equal(got[k], v), k
        else:  # by the layout's own convention (Component.inexact_layouts): float32 rounding at most
            torch.testing.assert_close(got[k], v, rtol=0, atol=float(torch.finfo(torch.float32).eps) * 4)


def _tied(family, component, aliases):
    tied = getattr(get_component(family, component), "tied", {})
    assert aliases == set(tied), "only declared tied aliases may be left out of a checkpoint"
    return tied.items()


def test_load_model_casts_plain_weights(tmp_path):
    path = save_fixture(Fixture("wan", "transformer", "2.1-t2v", "diffusers", "diffusers-folder"), tmp_path)
    model = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
